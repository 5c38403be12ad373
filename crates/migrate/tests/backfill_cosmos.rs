//! The backfill from a live Cosmos-protocol server (the real `@vercel/cosmosdb-server`, started
//! by the test command): the same documents land as from export files, and a run interrupted
//! mid-container resumes from its continuation token to the same final state.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::channel::oneshot;
use mystira_copy::source::SourceError;
use mystira_cosmos_codec::generate::GenerateOptions;
use mystira_cosmos_store::CosmosStore;
use mystira_migrate::backfill::local_owner;
use mystira_migrate::{
    BackfillConfig, CosmosSource, DocumentSource, ExportDirSource, SourcePage, run_backfill,
};
use mystira_test_support::cosmos::generated_store;
use mystira_test_support::postgres::{migrated_database_beside, unique_database_name};
use sqlx::PgPool;

async fn seeded_store(accounts: u64) -> (CosmosStore, tempfile::TempDir) {
    let options = GenerateOptions {
        accounts,
        seed: 5,
        dirty: 0.05,
    };
    let (store, dir) = generated_store("backfill", &options).await;
    (store, dir)
}

async fn counts(pool: &PgPool) -> Vec<i64> {
    let mut out = Vec::new();
    for t in [
        "accounts",
        "subscriptions",
        "user_profiles",
        "user_badges",
        "completed_scenarios",
        "pending_signups",
        "migration.quarantine",
    ] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {t}")))
            .fetch_one(pool)
            .await
            .unwrap();
        out.push(n);
    }
    out
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn backfill_from_cosmos_matches_backfill_from_export_files(pool: PgPool) {
    let (store, dir) = seeded_store(40).await;
    let config = BackfillConfig {
        batch_rows: 50,
        ..BackfillConfig::default()
    };
    let from_files = run_backfill(
        &pool,
        &ExportDirSource::new(dir.path()),
        &config,
        &|_, _| {},
    )
    .await
    .unwrap();
    let expected = counts(&pool).await;
    sqlx::raw_sql(
        "truncate accounts, user_profiles, pending_signups, migration.document_versions,
                  migration.quarantine, migration.checkpoints cascade",
    )
    .execute(&pool)
    .await
    .unwrap();
    let from_cosmos = run_backfill(&pool, &CosmosSource::new(store), &config, &|_, _| {})
        .await
        .unwrap();
    assert!(from_cosmos.reconciles());
    assert_eq!(counts(&pool).await, expected);
    for (container, c) in &from_cosmos.containers {
        // the live source's final pass reads the documents of the newest second again (see
        // `CosmosSource`); the rows (compared above) and the writes are the same
        assert!(
            c.read >= from_files.containers[container].read,
            "{container}"
        );
        assert_eq!(
            c.written, from_files.containers[container].written,
            "{container}"
        );
    }
}

/// Documents per source page and per write: small, so that each container spans many pages.
const PAGE: usize = 10;

/// The live source, wrapped: records the position each page is asked from and how many
/// documents it served, and when asked for page `kill_at.1` (0-based) of container `kill_at.0`
/// fires `killed` and never answers. The test then drops the whole run at that point, the way a
/// process killed mid-container stops: no error path runs, the run record stays open, the
/// range's lease stays held, and only what was checkpointed is left.
struct Killable<'a> {
    inner: &'a CosmosSource,
    kill_at: Option<(&'static str, usize)>,
    asked: Mutex<Vec<(String, Option<serde_json::Value>)>>,
    served: Mutex<BTreeMap<String, u64>>,
    killed: Mutex<Option<oneshot::Sender<()>>>,
}

impl<'a> Killable<'a> {
    fn new(
        inner: &'a CosmosSource,
        kill_at: Option<(&'static str, usize)>,
    ) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let source = Self {
            inner,
            kill_at,
            asked: Mutex::default(),
            served: Mutex::default(),
            killed: Mutex::new(Some(tx)),
        };
        (source, rx)
    }

    /// The positions `container`'s pages were asked from, in order.
    fn asked(&self, container: &str) -> Vec<Option<serde_json::Value>> {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| c == container)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// How many documents of `container` this source handed to the run.
    fn served(&self, container: &str) -> u64 {
        self.served
            .lock()
            .unwrap()
            .get(container)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl DocumentSource for Killable<'_> {
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
        let page_no = {
            let mut asked = self.asked.lock().unwrap();
            asked.push((container.to_owned(), position.cloned()));
            asked.iter().filter(|(c, _)| c == container).count() - 1
        };
        if self
            .kill_at
            .is_some_and(|(c, p)| c == container && p == page_no)
        {
            if let Some(tx) = self.killed.lock().unwrap().take() {
                let _ = tx.send(());
            }
            std::future::pending::<()>().await;
        }
        let page = self.inner.read_page(container, position, max).await?;
        *self
            .served
            .lock()
            .unwrap()
            .entry(container.to_owned())
            .or_default() += page.documents.len() as u64;
        Ok(page)
    }
}

/// Runs the backfill until `source` reaches its kill point, then drops the run there.
async fn run_until_killed(
    pool: &PgPool,
    source: &Killable<'_>,
    killed: oneshot::Receiver<()>,
    config: &BackfillConfig,
) {
    tokio::select! {
        ended = run_backfill(pool, source, config, &|_, _| {}) => {
            panic!("the run ended before its kill point: {:?}", ended.map(|r| r.containers))
        }
        _ = killed => {}
    }
}

/// Every row the backfill writes, as text, in key order. Of the bookkeeping tables, the times a
/// copy was made or a problem seen are left out: they differ between any two runs.
const ROWS: [(&str, &str); 9] = [
    ("accounts", "select t::text from accounts t order by t.id"),
    (
        "subscriptions",
        "select t::text from subscriptions t order by t.id",
    ),
    (
        "completed_scenarios",
        "select t::text from completed_scenarios t order by t.id",
    ),
    (
        "user_profiles",
        "select t::text from user_profiles t order by t.id",
    ),
    (
        "user_badges",
        "select t::text from user_badges t order by t.id",
    ),
    (
        "pending_signups",
        "select t::text from pending_signups t order by t.id",
    ),
    (
        "migration.document_versions",
        "select (container, document_id, key, source_ts, source_etag)::text
           from migration.document_versions order by container, document_id",
    ),
    (
        "migration.document_notes",
        "select (container, document_id, code, subject, detail)::text
           from migration.document_notes order by container, document_id, code, subject",
    ),
    (
        "migration.quarantine (open)",
        "select (container, document_id, reason_code, message, document, source_ts, attempts)::text
           from migration.quarantine where resolved_at is null order by container, document_id",
    ),
];

async fn rows(pool: &PgPool) -> BTreeMap<&'static str, Vec<String>> {
    let mut out = BTreeMap::new();
    for (table, sql) in ROWS {
        let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(pool).await.unwrap();
        out.insert(table, rows);
    }
    out
}

/// Compares two databases' rows table by table, naming the first row that differs.
fn assert_same_rows(
    got: &BTreeMap<&'static str, Vec<String>>,
    want: &BTreeMap<&'static str, Vec<String>>,
) {
    for (table, want) in want {
        let got = &got[table];
        if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
            panic!(
                "{table} differs from the clean run's at row {i} ({} rows, clean: {}):\n  \
                 resumed: {:?}\n  clean:   {:?}",
                got.len(),
                want.len(),
                got.get(i),
                want.get(i)
            );
        }
    }
}

/// The backfill's work on `container` (through [`Killable`], one range per container): the
/// position saved after its last written page, whether it is done, documents read so far.
async fn work_range(pool: &PgPool, container: &str) -> (Option<serde_json::Value>, bool, u64) {
    let ranges: Vec<(Option<serde_json::Value>, bool, serde_json::Value)> = sqlx::query_as(
        "select position, done, counts from migration.work_ranges
          where job = 'backfill' and unit = $1",
    )
    .bind(container)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(ranges.len(), 1, "{container}: {ranges:?}");
    let (position, done, counts) = ranges.into_iter().next().unwrap();
    let read = counts.get("read").and_then(serde_json::Value::as_u64);
    (position, done, read.unwrap_or(0))
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_run_killed_mid_container_resumes_from_its_continuation_token_to_the_clean_state(
    pool: PgPool,
) {
    let (store, _dir) = seeded_store(120).await;
    let source = CosmosSource::new(store);
    let config = BackfillConfig {
        batch_rows: PAGE,
        ..BackfillConfig::default()
    };

    // the reference: a clean, uninterrupted run into another fresh database, through the
    // same wrapper (which reads each container as one range, like a run planned before live
    // containers were split; `backfill_ranges.rs` tests the split ranges)
    let clean_db = unique_database_name("resume_clean");
    let clean_pool = migrated_database_beside(&pool, &clean_db).await;
    let (whole, _never) = Killable::new(&source, None);
    let clean = run_backfill(&clean_pool, &whole, &config, &|_, _| {})
        .await
        .unwrap();
    assert!(clean.reconciles(), "{clean:?}");
    let clean_rows = rows(&clean_pool).await;
    clean_pool.close().await;
    // its rows are kept: the database itself is not needed any more
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop database {clean_db} with (force)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let total = |container: &str| clean.containers[container].read;
    for container in ["Accounts", "UserProfiles"] {
        assert!(
            total(container) > 6 * PAGE as u64,
            "{container}: {} documents are too few to kill the run mid-container",
            total(container)
        );
    }

    // 1st run: killed when it asks for its 4th Accounts page. Its workers are named after a
    // local process that does not exist (a pid above any pid_max), as a killed
    // `mystira-users migrate` leaves them.
    let dead = |pid| BackfillConfig {
        owner: local_owner(pid),
        ..config.clone()
    };
    let (first, killed) = Killable::new(&source, Some(("Accounts", 3)));
    run_until_killed(&pool, &first, killed, &dead(u32::MAX)).await;
    let accounts_done_first = first.served("Accounts");
    assert!(
        accounts_done_first > 0 && accounts_done_first < total("Accounts"),
        "killed mid-container: {accounts_done_first} of {}",
        total("Accounts")
    );
    let (token, done, read) = work_range(&pool, "Accounts").await;
    assert!(!done);
    assert_eq!(read, accounts_done_first, "checkpointed after every page");
    let token = token.expect("a position saved after the written pages");
    assert!(token.is_string(), "a continuation token: {token}");
    assert_eq!(
        first.asked("Accounts").last().unwrap().as_ref(),
        Some(&token),
        "killed when asking for the page after the saved position"
    );
    assert!(first.asked("UserProfiles").is_empty());

    // 2nd run: resumes Accounts from the saved token, and is killed in turn when it asks for
    // its 4th UserProfiles page
    let (second, killed) = Killable::new(&source, Some(("UserProfiles", 3)));
    run_until_killed(&pool, &second, killed, &dead(u32::MAX - 1)).await;
    assert_eq!(
        second.asked("Accounts").first().unwrap().as_ref(),
        Some(&token),
        "the resumed run starts from the saved continuation token, not from the beginning"
    );
    assert_eq!(
        second.served("Accounts"),
        total("Accounts") - accounts_done_first,
        "the resumed run reads only the rest of Accounts"
    );
    let (_, done, read) = work_range(&pool, "Accounts").await;
    assert!(done);
    assert_eq!(read, total("Accounts"));
    let profiles_done_second = second.served("UserProfiles");
    assert!(profiles_done_second > 0 && profiles_done_second < total("UserProfiles"));
    let (profiles_token, done, read) = work_range(&pool, "UserProfiles").await;
    assert!(!done);
    assert_eq!(read, profiles_done_second);
    let profiles_token = profiles_token.expect("a position saved after the written pages");
    assert!(profiles_token.is_string(), "{profiles_token}");

    // 3rd run: this process's own workers, to the end
    let (third, _) = Killable::new(&source, None);
    let report = run_backfill(&pool, &third, &config, &|_, _| {})
        .await
        .unwrap();
    assert!(report.joined, "the run joins the unfinished one");
    assert!(report.reconciles(), "{report:?}");
    assert!(
        third.asked("Accounts").is_empty(),
        "a finished container is not read again"
    );
    assert_eq!(
        third.asked("UserProfiles").first().unwrap().as_ref(),
        Some(&profiles_token),
        "the resumed run starts from the saved continuation token, not from the beginning"
    );
    assert_eq!(
        report.containers["UserProfiles"].read,
        total("UserProfiles") - profiles_done_second
    );
    assert_eq!(
        report.containers["PendingSignups"].read,
        total("PendingSignups")
    );
    // over the three attempts, each document was read, and counted, exactly once
    assert_eq!(report.job_totals, clean.containers);

    assert_same_rows(&rows(&pool).await, &clean_rows);
    // rows really were compared: the data set has problem documents and notes, too
    for table in ["migration.document_notes", "migration.quarantine (open)"] {
        assert!(!clean_rows[table].is_empty(), "{table}");
    }
}
