//! The backfill against real PostgreSQL, from generated export files: every document lands or
//! is quarantined with its expected reason, counts reconcile, a re-run changes nothing, and an
//! interrupted run resumed reaches exactly the state of a clean run.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use async_trait::async_trait;
use mystira_copy::source::SourceError;
use mystira_cosmos_codec::codec::Container;
use mystira_cosmos_codec::generate::{self, DocKind, Expected, GenerateOptions};
use mystira_migrate::{BackfillConfig, DocumentSource, ExportDirSource, SourcePage, run_backfill};
use mystira_test_support::postgres::digests;
use sqlx::PgPool;

const TABLES: [&str; 6] = [
    "accounts",
    "subscriptions",
    "user_profiles",
    "user_badges",
    "completed_scenarios",
    "pending_signups",
];

fn export(accounts: u64, dirty: f64) -> (tempfile::TempDir, generate::GenerateSummary) {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts,
            seed: 11,
            dirty,
        },
    )
    .unwrap();
    (dir, summary)
}

fn config(batch_rows: usize) -> BackfillConfig {
    BackfillConfig {
        batch_rows,
        ..BackfillConfig::default()
    }
}

fn no_progress(_: &str, _: &mystira_migrate::ContainerCounts) {}

/// A digest of every row of every domain table.
async fn state(pool: &PgPool) -> BTreeMap<&'static str, (i64, String)> {
    let mut conn = pool.acquire().await.unwrap();
    digests(&mut conn, &TABLES, |_| "t::text").await
}

async fn reset(pool: &PgPool) {
    sqlx::raw_sql(
        "truncate accounts, subscriptions, user_profiles, user_badges, completed_scenarios,
                  pending_signups, migration.document_versions, migration.document_notes,
                  migration.quarantine, migration.checkpoints, migration.runs",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn every_document_lands_or_is_quarantined_with_its_expected_reason(pool: PgPool) {
    let (dir, _) = export(150, 0.15);
    let report = run_backfill(
        &pool,
        &ExportDirSource::new(dir.path()),
        &config(64),
        &no_progress,
    )
    .await
    .unwrap();
    assert!(report.reconciles(), "{report:?}");

    // what the generator planted, by container and expected rejection code
    let mut expected_rejections: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut expected_orphans = 0i64;
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for doc in generate::documents_of(&GenerateOptions {
        accounts: 150,
        seed: 11,
        dirty: 0.15,
    }) {
        *total.entry(doc.container.name().to_owned()).or_default() += 1;
        match doc.kind.expected() {
            Expected::Rejected(code) => {
                *expected_rejections
                    .entry((doc.container.name().to_owned(), code.to_owned()))
                    .or_default() += 1;
            }
            Expected::DecodesWithMissingAccount => expected_orphans += 1,
            _ => {}
        }
    }
    assert!(
        !expected_rejections.is_empty(),
        "the data set should hold problem documents"
    );

    let quarantined: BTreeMap<(String, String), i64> = sqlx::query_as::<_, (String, String, i64)>(
        "select container, reason_code, count(*) from migration.quarantine group by 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(c, r, n)| ((c, r), n))
    .collect();
    assert_eq!(quarantined, expected_rejections);

    for (container, n) in &total {
        let counts = &report.containers[container];
        assert_eq!(counts.read, *n, "{container}");
    }
    let orphans: i64 = sqlx::query_scalar(
        "select count(*) from migration.document_notes where code = 'missing_account'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // planted orphans, plus the profiles of accounts that were quarantined: both land detached
    // with their reference kept in a note
    assert!(
        orphans >= expected_orphans,
        "{orphans} < {expected_orphans}"
    );
    let detached_with_note: i64 = sqlx::query_scalar(
        "select count(*) from user_profiles p join migration.document_notes n
           on n.container = 'UserProfiles' and n.code = 'missing_account'
          and n.detail->>'account_key' is not null and (n.detail->>'account_key')::uuid is not null
          and n.document_id = coalesce(p.cosmos_id, p.id::text)
         where p.account_id is null",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(detached_with_note, orphans);
    let accounts_written = report.containers["Accounts"].written as i64;
    assert_eq!(state(&pool).await["accounts"].0, accounts_written);
    // a quarantined document keeps the raw document and a message without values
    let (doc, message): (serde_json::Value, String) =
        sqlx::query_as("select document, message from migration.quarantine limit 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(doc.get("id").is_some());
    assert!(!message.contains('@'), "{message}");
    drop(dir);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn rerun_on_unchanged_data_changes_nothing(pool: PgPool) {
    let (dir, _) = export(80, 0.05);
    let source = ExportDirSource::new(dir.path());
    let first = run_backfill(&pool, &source, &config(100), &no_progress)
        .await
        .unwrap();
    let before = state(&pool).await;
    let second = run_backfill(&pool, &source, &config(100), &no_progress)
        .await
        .unwrap();
    assert_eq!(state(&pool).await, before);
    for (container, c) in &second.containers {
        assert_eq!(c.written, 0, "{container}");
        assert_eq!(
            c.unchanged, first.containers[container].written,
            "{container}"
        );
        assert!(c.reconciles());
    }
}

/// A source that fails after `pages` pages, like a process killed mid-run.
struct Interrupted<'a> {
    inner: &'a ExportDirSource,
    pages_left: std::sync::atomic::AtomicI64,
}

#[async_trait]
impl DocumentSource for Interrupted<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn has_container(&self, container: &str) -> Result<bool, SourceError> {
        self.inner.has_container(container).await
    }
    async fn read_page(
        &self,
        container: &str,
        position: Option<&serde_json::Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        if self
            .pages_left
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            <= 0
        {
            return Err(SourceError::Unavailable("killed".into()));
        }
        self.inner.read_page(container, position, max).await
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn interrupted_runs_resume_to_exactly_the_clean_final_state(pool: PgPool) {
    let (dir, _) = export(120, 0.05);
    let source = ExportDirSource::new(dir.path());
    run_backfill(&pool, &source, &config(40), &no_progress)
        .await
        .unwrap();
    let clean = state(&pool).await;
    let clean_quarantine: i64 = sqlx::query_scalar("select count(*) from migration.quarantine")
        .fetch_one(&pool)
        .await
        .unwrap();

    // interrupt at several points (in Accounts, in UserProfiles, in PendingSignups), resuming
    // each time from where the previous attempt stopped
    reset(&pool).await;
    let mut attempts = 0;
    for pages in [2, 5, 9, 1, 3] {
        attempts += 1;
        let flaky = Interrupted {
            inner: &source,
            pages_left: pages.into(),
        };
        if run_backfill(&pool, &flaky, &config(40), &no_progress)
            .await
            .is_ok()
        {
            break;
        }
    }
    assert!(
        attempts > 1,
        "the run should have been interrupted at least once"
    );
    run_backfill(&pool, &source, &config(40), &no_progress)
        .await
        .unwrap();
    assert_eq!(state(&pool).await, clean);
    let quarantine: i64 = sqlx::query_scalar("select count(*) from migration.quarantine")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(quarantine, clean_quarantine);
}

#[test]
fn generated_kinds_cover_every_container() {
    let kinds: std::collections::BTreeSet<(Container, bool)> =
        generate::documents_of(&GenerateOptions {
            accounts: 50,
            seed: 1,
            dirty: 0.5,
        })
        .map(|d| (d.container, d.kind != DocKind::Clean))
        .collect();
    assert_eq!(kinds.len(), 6, "{kinds:?}");
}

/// Before issue 10 item 4, every magic-link sign-up was quarantined `unsupported_version`. The
/// next backfill over the same source stores them and resolves those quarantine rows, so the
/// sign-ups in flight at cutover are not lost.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn magic_link_signups_quarantined_by_an_earlier_run_land_and_are_resolved(pool: PgPool) {
    let (dir, _) = export(150, 0.0);
    let text = std::fs::read_to_string(dir.path().join("PendingSignups.jsonl")).unwrap();
    let magic: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|d| d["VerificationTokenHash"].is_string())
        .collect();
    assert!(!magic.is_empty());
    // what an earlier version of this tool left behind
    for doc in &magic {
        sqlx::query(
            "insert into migration.quarantine (container, document_id, reason_code, message, document)
             values ('PendingSignups', $1, 'unsupported_version', 'magic-link version', $2)",
        )
        .bind(doc["id"].as_str().unwrap())
        .bind(doc)
        .execute(&pool)
        .await
        .unwrap();
    }
    let report = run_backfill(
        &pool,
        &ExportDirSource::new(dir.path()),
        &config(16),
        &no_progress,
    )
    .await
    .unwrap();
    assert!(report.reconciles(), "{report:?}");
    let open: i64 = sqlx::query_scalar(
        "select count(*) from migration.quarantine
         where container = 'PendingSignups' and resolved_at is null",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(open, 0);
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from pending_signups
         where coalesce(cosmos_id, id::text) = any($1) and code is null
           and verification_token_hash is not null",
    )
    .bind(
        magic
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, magic.len() as i64);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn of_two_accounts_of_one_login_the_newer_keeps_it_in_any_file_order_and_batch_size(
    pool: PgPool,
) {
    let (dir, _) = export(40, 0.0);
    let path = dir.path().join("Accounts.jsonl");
    let mut docs: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let login_field = |d: &serde_json::Value| {
        ["Auth0UserId", "ExternalUserId"]
            .into_iter()
            .find(|f| d[*f].as_str().is_some_and(|v| v.starts_with("auth0|")))
    };
    let with_login: Vec<usize> = (0..docs.len())
        .filter(|&i| login_field(&docs[i]).is_some())
        .collect();
    let (first, last) = (with_login[0], *with_login.last().unwrap());
    // the last account claims the first one's login, and is newer
    let login = docs[first][login_field(&docs[first]).unwrap()].clone();
    let field = login_field(&docs[last]).unwrap();
    docs[last][field] = login.clone();
    let newest = docs.iter().filter_map(|d| d["_ts"].as_i64()).max().unwrap();
    docs[last]["_ts"] = serde_json::json!(newest + 1);
    let (loser, keeper) = (
        docs[first]["id"].as_str().unwrap().to_owned(),
        docs[last]["id"].as_str().unwrap().to_owned(),
    );

    let mut reference = None;
    for (reversed, batch_rows) in [(false, 500), (true, 500), (false, 3), (true, 7)] {
        reset(&pool).await;
        let mut ordered = docs.clone();
        if reversed {
            ordered.reverse();
        }
        let text: String = ordered.iter().map(|d| format!("{d}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let report = run_backfill(
            &pool,
            &ExportDirSource::new(dir.path()),
            &config(batch_rows),
            &no_progress,
        )
        .await
        .unwrap();
        assert!(report.reconciles(), "{report:?}");
        let entries: Vec<(String, String)> = sqlx::query_as(
            "select document_id, message from migration.quarantine
             where container = 'Accounts' and reason_code = 'duplicate_auth0_user_id'
               and resolved_at is null",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(entries.len(), 1, "reversed={reversed} batch={batch_rows}");
        assert_eq!(entries[0].0, loser);
        assert!(entries[0].1.contains(&keeper), "{}", entries[0].1);
        assert!(
            !entries[0].1.contains(login.as_str().unwrap()),
            "no value in a message"
        );
        let now = state(&pool).await;
        match &reference {
            None => reference = Some(now),
            Some(r) => assert_eq!(&now, r, "reversed={reversed} batch={batch_rows}"),
        }
    }
}
