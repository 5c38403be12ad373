//! A live container read in parallel: split into ranges (feed ranges, then `_ts` intervals)
//! that several workers and runs lease, against the real Cosmos-protocol test server and real
//! PostgreSQL. Every document is read exactly once across the ranges' first passes; documents
//! written while the run goes are all there at the end; a run killed mid-range resumes from its
//! continuation token; and `--max-rps` is one budget for every process of a run.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::channel::oneshot;
use mystira_copy::source::{RangePlan, SourceError};
use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_cosmos_store::{CosmosStore, PartitionKey};
use mystira_migrate::backfill::local_owner;
use mystira_migrate::{
    BackfillConfig, CosmosSource, DocumentSource, ExportDirSource, SourceDocument, SourcePage,
    run_backfill,
};
use mystira_test_support::cosmos::{all_documents, generated_store, without_system_properties};
use mystira_test_support::postgres::{migrated_database_beside, unique_database_name};
use serde_json::Value;
use sqlx::PgPool;

const CONTAINERS: [&str; 3] = ["Accounts", "UserProfiles", "PendingSignups"];

fn partition_of(container: &str, doc: &Value) -> PartitionKey {
    let field = if container == "PendingSignups" {
        "email"
    } else {
        "id"
    };
    doc[field].as_str().unwrap().to_owned().into()
}

/// Rewrites a quarter of each container's documents, a second apart, three times, so that
/// their `_ts` (whole seconds, set by the server) span four seconds: enough to split by `_ts`.
async fn spread_ts(store: &CosmosStore) {
    for wave in 1..4usize {
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        for container in CONTAINERS {
            let handle = store.container(container).await.unwrap();
            let docs = all_documents(store, container).await;
            for (i, doc) in docs.iter().enumerate() {
                if i % 4 == wave {
                    let pk = partition_of(container, doc);
                    let id = doc["id"].as_str().unwrap();
                    handle
                        .upsert(pk, id, &without_system_properties(doc))
                        .await
                        .unwrap();
                }
            }
        }
    }
}

async fn seeded_store(accounts: u64) -> (CosmosStore, tempfile::TempDir) {
    let options = GenerateOptions {
        accounts,
        seed: 11,
        dirty: 0.0,
    };
    let (store, dir) = generated_store("ranges", &options).await;
    spread_ts(&store).await;
    (store, dir)
}

/// One page read through [`Probe`].
#[derive(Debug, Clone)]
struct Read {
    container: String,
    /// The range, as its plan serialised.
    range: String,
    /// Whether the range has an end (`false`: the open-ended last range).
    bounded: bool,
    position: Option<Value>,
    ids: Vec<String>,
}

impl Read {
    fn in_final_pass(&self) -> bool {
        self.position
            .as_ref()
            .and_then(|p| p.get("pass"))
            .and_then(Value::as_str)
            == Some("final")
    }
}

fn range_key(range: &RangePlan) -> String {
    format!("{}..{:?}", range.start, range.end)
}

/// The live source, wrapped: records every page read (range, position, ids), can hold every
/// page of `Accounts` but each range's first until `release` is set, and when asked for page `kill_at.1` (0-based) of
/// container `kill_at.0` fires `killed` and never answers (the test then drops the run there,
/// as a process killed mid-range stops: only what was checkpointed is left).
struct Probe<'a> {
    inner: &'a CosmosSource,
    reads: Mutex<Vec<Read>>,
    asked: Mutex<BTreeMap<String, usize>>,
    release: AtomicBool,
    kill_at: Option<(&'static str, usize)>,
    killed: Mutex<Option<oneshot::Sender<()>>>,
}

impl<'a> Probe<'a> {
    fn new(inner: &'a CosmosSource) -> Self {
        Self {
            inner,
            reads: Mutex::default(),
            asked: Mutex::default(),
            release: AtomicBool::new(true),
            kill_at: None,
            killed: Mutex::new(None),
        }
    }

    fn killed_at(
        inner: &'a CosmosSource,
        container: &'static str,
        page: usize,
    ) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let probe = Self {
            kill_at: Some((container, page)),
            killed: Mutex::new(Some(tx)),
            ..Self::new(inner)
        };
        (probe, rx)
    }

    fn reads(&self) -> Vec<Read> {
        self.reads.lock().unwrap().clone()
    }
}

#[async_trait]
impl DocumentSource for Probe<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn has_container(&self, container: &str) -> Result<bool, SourceError> {
        self.inner.has_container(container).await
    }
    async fn read_page(
        &self,
        container: &str,
        position: Option<&Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        self.inner.read_page(container, position, max).await
    }
    async fn plan_ranges(&self, container: &str, n: usize) -> Result<Vec<RangePlan>, SourceError> {
        self.inner.plan_ranges(container, n).await
    }
    fn awaits_bounded_ranges(&self, range: &RangePlan, position: Option<&Value>) -> bool {
        self.inner.awaits_bounded_ranges(range, position)
    }
    async fn read_range_page(
        &self,
        container: &str,
        range: &RangePlan,
        position: Option<&Value>,
        max: usize,
    ) -> Result<SourcePage, SourceError> {
        let page_no = {
            let mut asked = self.asked.lock().unwrap();
            let n = asked.entry(container.to_owned()).or_default();
            *n += 1;
            *n - 1
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
        let mut read = Read {
            container: container.to_owned(),
            range: range_key(range),
            bounded: range.end.as_ref().is_some_and(|e| !e.is_null()),
            position: position.cloned(),
            ids: Vec::new(),
        };
        if container == "Accounts" && position.is_some() {
            while !self.release.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let page = self
            .inner
            .read_range_page(container, range, position, max)
            .await?;
        read.ids = page
            .documents
            .iter()
            .filter_map(|d| match d {
                SourceDocument::Document(v) => v["id"].as_str().map(str::to_owned),
                SourceDocument::Malformed { .. } => None,
            })
            .collect();
        self.reads.lock().unwrap().push(read);
        Ok(page)
    }
}

/// Every row the backfill writes, as text, in key order (times of copy left out).
const ROWS: [(&str, &str); 8] = [
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

fn assert_same_rows(
    got: &BTreeMap<&'static str, Vec<String>>,
    want: &BTreeMap<&'static str, Vec<String>>,
) {
    for (table, want) in want {
        let got = &got[table];
        if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
            panic!(
                "{table} differs from the reference run's at row {i} ({} rows, reference: {}):\n  \
                 got:       {:?}\n  reference: {:?}",
                got.len(),
                want.len(),
                got.get(i),
                want.get(i)
            );
        }
    }
}

/// The rows of a 1-worker, 1-range run of `source` into a fresh database (dropped after).
async fn reference_rows(
    pool: &PgPool,
    source: &CosmosSource,
    batch_rows: usize,
) -> BTreeMap<&'static str, Vec<String>> {
    let name = unique_database_name("ranges_ref");
    let reference = migrated_database_beside(pool, &name).await;
    let config = BackfillConfig {
        batch_rows,
        workers: 1,
        ranges_per_container: 1,
        ..BackfillConfig::default()
    };
    let report = run_backfill(&reference, source, &config, &|_, _| {})
        .await
        .unwrap();
    assert!(report.reconciles(), "{report:?}");
    let out = rows(&reference).await;
    reference.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop database {name} with (force)"
    )))
    .execute(pool)
    .await
    .unwrap();
    out
}

/// The planned ranges of `container` in this database: (range_no, start, end, position, done).
async fn work_ranges(
    pool: &PgPool,
    container: &str,
) -> Vec<(i32, Value, Option<Value>, Option<Value>, bool)> {
    sqlx::query_as(
        "select range_no, range_start, range_end, position, done from migration.work_ranges
          where job = 'backfill' and unit = $1 order by range_no",
    )
    .bind(container)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_live_container_split_into_ranges_with_4_workers_reads_every_document_exactly_once(
    pool: PgPool,
) {
    let (store, _dir) = seeded_store(40).await;
    let source = CosmosSource::new(store.clone());
    let want = reference_rows(&pool, &source, 7).await;

    let probe = Probe::new(&source);
    let config = BackfillConfig {
        batch_rows: 7,
        workers: 4,
        ranges_per_container: 8,
        ..BackfillConfig::default()
    };
    let report = run_backfill(&pool, &probe, &config, &|_, _| {})
        .await
        .unwrap();
    assert!(report.reconciles(), "{report:?}");
    assert_same_rows(&rows(&pool).await, &want);

    let reads = probe.reads();
    for container in CONTAINERS {
        let ranges = work_ranges(&pool, container).await;
        assert!(
            ranges.len() >= 3,
            "{container}: four seconds of _ts split into {} ranges",
            ranges.len()
        );
        assert!(ranges.iter().all(|r| r.4), "{container}: every range done");
        // bounded ranges first, the open-ended one last
        assert!(ranges.last().unwrap().2.is_none());
        assert!(ranges[..ranges.len() - 1].iter().all(|r| r.2.is_some()));

        // the first passes of the ranges together read each document exactly once
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut ranges_with_documents = BTreeSet::new();
        for read in reads
            .iter()
            .filter(|r| r.container == container && !r.in_final_pass())
        {
            for id in &read.ids {
                if let Some(other) = seen.insert(id.clone(), read.range.clone()) {
                    panic!(
                        "{container}: a document was read by two ranges ({other} and {})",
                        read.range
                    );
                }
                ranges_with_documents.insert(read.range.clone());
            }
        }
        let all: BTreeSet<String> = all_documents(&store, container)
            .await
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            seen.keys().cloned().collect::<BTreeSet<_>>(),
            all,
            "{container}: every document read"
        );
        assert!(
            ranges_with_documents.len() >= 3,
            "{container}: the documents are spread over the ranges: {ranges_with_documents:?}"
        );
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn documents_written_while_the_run_goes_are_all_in_postgresql_at_their_version(pool: PgPool) {
    let (store, _dir) = seeded_store(40).await;
    let source = CosmosSource::new(store.clone());
    let mut probe = Probe::new(&source);
    // every Accounts range reads its first page, then waits for the writes below: they land
    // while the ranges are under way, which moves documents out of ranges not yet read
    probe.release = AtomicBool::new(false);
    const WORKERS: usize = 4;
    let config = BackfillConfig {
        batch_rows: 3,
        workers: WORKERS,
        ranges_per_container: 8,
        ..BackfillConfig::default()
    };
    let extra = tempfile::tempdir().unwrap();
    generate::write_export(
        extra.path(),
        &GenerateOptions {
            accounts: 10,
            seed: 12,
            dirty: 0.0,
        },
    )
    .unwrap();
    let new_accounts: Vec<Value> = std::fs::read_to_string(extra.path().join("Accounts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let writer = async {
        let first_pages = || {
            probe
                .reads()
                .iter()
                .filter(|r| r.container == "Accounts" && r.position.is_none())
                .count()
        };
        loop {
            let ranges: i64 = sqlx::query_scalar(
                "select count(*) from migration.work_ranges
                  where job = 'backfill' and unit = 'Accounts'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if ranges > 0 && first_pages() >= (ranges as usize).min(WORKERS) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let handle = store.container("Accounts").await.unwrap();
        // every existing account rewritten: a new _ts and _etag, so each moves to the open range
        let docs = all_documents(&store, "Accounts").await;
        for doc in &docs {
            let id = doc["id"].as_str().unwrap();
            handle
                .upsert(
                    partition_of("Accounts", doc),
                    id,
                    &without_system_properties(doc),
                )
                .await
                .unwrap();
        }
        for doc in &new_accounts {
            let id = doc["id"].as_str().unwrap();
            handle
                .upsert(partition_of("Accounts", doc), id, doc)
                .await
                .unwrap();
        }
        probe.release.store(true, Ordering::SeqCst);
        docs.iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_owned(),
                    d["_ts"].as_i64().unwrap(),
                )
            })
            .collect::<BTreeMap<String, i64>>()
    };
    let (report, before) = tokio::join!(run_backfill(&pool, &probe, &config, &|_, _| {}), writer);
    let report = report.unwrap();
    assert!(report.reconciles(), "{report:?}");

    // every account in Cosmos now is in PostgreSQL at exactly its current version
    let versions: BTreeMap<String, (i64, String)> = sqlx::query_as::<_, (String, i64, String)>(
        "select document_id, source_ts, source_etag from migration.document_versions
          where container = 'Accounts'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, ts, etag)| (id, (ts, etag)))
    .collect();
    let now = all_documents(&store, "Accounts").await;
    assert_eq!(now.len(), before.len() + new_accounts.len());
    for doc in &now {
        let id = doc["id"].as_str().unwrap();
        let want = (
            doc["_ts"].as_i64().unwrap(),
            doc["_etag"].as_str().unwrap().to_owned(),
        );
        assert_eq!(
            versions.get(id),
            Some(&want),
            "account {id} at its current version"
        );
    }
    let accounts: i64 = sqlx::query_scalar("select count(*) from accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(accounts, now.len() as i64);

    // and the writes did move documents out of bounded ranges before those ranges reached
    // them: the open range read them instead
    let open_from: i64 = sqlx::query_scalar(
        "select (range_start->>'ts_from')::bigint from migration.work_ranges
          where job = 'backfill' and unit = 'Accounts' and range_end is null",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let reads = probe.reads();
    let read_by_bounded: BTreeSet<&str> = reads
        .iter()
        .filter(|r| r.container == "Accounts" && r.bounded)
        .flat_map(|r| r.ids.iter().map(String::as_str))
        .collect();
    let moved_before_read = before
        .iter()
        .filter(|(id, ts)| **ts < open_from && !read_by_bounded.contains(id.as_str()))
        .count();
    assert!(
        moved_before_read > 0,
        "the writes were meant to move accounts out of ranges not yet read"
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_live_run_killed_mid_range_resumes_each_range_from_its_continuation_token(pool: PgPool) {
    let (store, _dir) = seeded_store(40).await;
    let source = CosmosSource::new(store);
    let want = reference_rows(&pool, &source, 4).await;
    let config = |pid| BackfillConfig {
        batch_rows: 4,
        workers: 2,
        ranges_per_container: 4,
        // named after a local process that does not exist, as a killed `migrate` leaves them
        owner: local_owner(pid),
        ..BackfillConfig::default()
    };

    let (first, killed) = Probe::killed_at(&source, "Accounts", 6);
    let dead = config(u32::MAX);
    tokio::select! {
        ended = run_backfill(&pool, &first, &dead, &|_, _| {}) => {
            panic!("the run ended before its kill point: {:?}", ended.map(|r| r.containers))
        }
        _ = killed => {}
    }
    let saved = work_ranges(&pool, "Accounts").await;
    let mid_range: Vec<_> = saved
        .iter()
        .filter(|r| !r.4 && r.3.as_ref().is_some_and(|p| p["token"].is_string()))
        .collect();
    assert!(!mid_range.is_empty(), "a range killed mid-way: {saved:?}");

    let second = Probe::new(&source);
    let report = run_backfill(&pool, &second, &config(u32::MAX - 1), &|_, _| {})
        .await
        .unwrap();
    assert!(report.joined);
    assert!(report.reconciles(), "{report:?}");
    let reads = second.reads();
    for (_, start, end, position, _) in &mid_range {
        let key = range_key(&RangePlan {
            start: start.clone(),
            end: end.clone(),
        });
        let first_ask = reads
            .iter()
            .find(|r| r.container == "Accounts" && r.range == key)
            .expect("the unfinished range is read again");
        assert_eq!(
            first_ask.position.as_ref(),
            position.as_ref(),
            "resumed from the saved continuation token, not from the range's start"
        );
    }
    for (_, start, end, _, done) in &saved {
        if *done {
            let key = range_key(&RangePlan {
                start: start.clone(),
                end: end.clone(),
            });
            assert!(
                !reads
                    .iter()
                    .any(|r| r.container == "Accounts" && r.range == key),
                "a range done before the kill is not read again"
            );
        }
    }
    assert_same_rows(&rows(&pool).await, &want);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn two_runners_of_one_run_share_one_max_rps_budget(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts: 150,
            seed: 13,
            dirty: 0.0,
        },
    )
    .unwrap();
    let source = ExportDirSource::new(dir.path());
    const RATE: u32 = 300;
    const BATCH: usize = 10;
    let config = |owner: &str| BackfillConfig {
        batch_rows: BATCH,
        workers: 2,
        ranges_per_container: 8,
        max_docs_per_second: Some(RATE),
        owner: owner.to_owned(),
        ..BackfillConfig::default()
    };
    let (a, b) = (config("runner-a"), config("runner-b"));
    let started = Instant::now();
    let (one, two) = tokio::join!(
        run_backfill(&pool, &source, &a, &|_, _| {}),
        run_backfill(&pool, &source, &b, &|_, _| {})
    );
    let elapsed = started.elapsed().as_secs_f64();
    let (one, two) = (one.unwrap(), two.unwrap());
    assert!(
        one.joined != two.joined,
        "one run, joined by the other runner"
    );
    let read = |r: &mystira_migrate::BackfillReport| -> u64 {
        r.containers.values().map(|c| c.read).sum()
    };
    assert!(read(&one) > 0 && read(&two) > 0, "both runners read");
    let total = read(&one) + read(&two);
    let job: u64 = one.job_totals.values().map(|c| c.read).sum();
    assert_eq!(total, job);
    // every page is paid for before its worker goes on, so only the first page of each of the
    // four workers can come ahead of the budget
    let floor = (total - 4 * BATCH as u64) as f64 / f64::from(RATE);
    assert!(
        elapsed >= 0.95 * floor,
        "{total} documents at {RATE}/s shared took {elapsed:.2} s, less than {floor:.2} s"
    );
    // and not much slower either: the budget is shared, not serialised per runner
    let ceiling = 1.5 * total as f64 / f64::from(RATE) + 2.0;
    assert!(
        elapsed <= ceiling,
        "{total} documents at {RATE}/s took {elapsed:.2} s, more than {ceiling:.2} s"
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn one_runner_alone_keeps_to_its_max_rps(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts: 60,
            seed: 14,
            dirty: 0.0,
        },
    )
    .unwrap();
    const RATE: u32 = 200;
    const BATCH: usize = 10;
    let config = BackfillConfig {
        batch_rows: BATCH,
        workers: 2,
        max_docs_per_second: Some(RATE),
        ..BackfillConfig::default()
    };
    let started = Instant::now();
    let report = run_backfill(
        &pool,
        &ExportDirSource::new(dir.path()),
        &config,
        &|_, _| {},
    )
    .await
    .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = report.containers.values().map(|c| c.read).sum();
    // as before the budget moved to PostgreSQL: only each worker's first page comes early
    let floor = (total - 2 * BATCH as u64) as f64 / f64::from(RATE);
    assert!(
        elapsed >= 0.95 * floor,
        "{total} documents at {RATE}/s took {elapsed:.2} s, less than {floor:.2} s"
    );
}
