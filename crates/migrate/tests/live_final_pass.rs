//! The last range of a live container and its final pass, against the real Cosmos-protocol
//! test server and real PostgreSQL: planning takes the change feed's position before the
//! newest `_ts`, so the final pass reads the documents written after planning, each once, and
//! nothing else (it used to read every document of the newest second again: a container loaded
//! within a second or two was read, counted and set aside twice over). A server without a
//! change feed keeps the earlier final pass.
#![allow(clippy::unwrap_used)]

use mystira_test_support::cosmos as support;
use support::{all_documents, without_system_properties};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use mystira_copy::source::{RangePlan, SourceError};
use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_cosmos_store::CosmosStore;
use mystira_migrate::{
    BackfillConfig, CosmosSource, DocumentSource, LoadPath, SourceDocument, SourcePage,
    run_backfill,
};
use serde_json::{Value, json};
use sqlx::PgPool;

const CONTAINERS: [&str; 3] = ["Accounts", "UserProfiles", "PendingSignups"];

/// Writes `accounts` generated accounts (clean data, with their profiles and sign-ups) to a
/// fresh database of the test server.
async fn seeded_store(test: &str, accounts: u64) -> CosmosStore {
    let options = GenerateOptions {
        accounts,
        seed: 21,
        dirty: 0.0,
    };
    support::generated_store(test, &options).await.0
}

fn id_of(doc: &Value) -> String {
    doc["id"].as_str().unwrap().to_owned()
}

/// The live source, wrapped: records the ids each page of each pass served, and before the
/// first page of `Accounts` (so after planning) runs `writes` once.
struct Recorder<'a> {
    inner: &'a CosmosSource,
    /// (container, final pass, ids)
    reads: Mutex<Vec<(String, bool, Vec<String>)>>,
    writes: tokio::sync::Mutex<Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>>>,
}

impl Recorder<'_> {
    /// The ids of `container` read by the first passes (`final_pass` false) or the final
    /// pass, with how many times each.
    fn read(&self, container: &str, final_pass: bool) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (c, f, ids) in self.reads.lock().unwrap().iter() {
            if c == container && *f == final_pass {
                for id in ids {
                    *out.entry(id.clone()).or_default() += 1;
                }
            }
        }
        out
    }
}

#[async_trait]
impl DocumentSource for Recorder<'_> {
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
        if container == "Accounts"
            && let Some(writes) = self.writes.lock().await.take()
        {
            writes.await;
        }
        let final_pass =
            position.and_then(|p| p.get("pass")).and_then(Value::as_str) == Some("final");
        let page = self
            .inner
            .read_range_page(container, range, position, max)
            .await?;
        let ids = page
            .documents
            .iter()
            .filter_map(|d| match d {
                SourceDocument::Document(v) => v["id"].as_str().map(str::to_owned),
                SourceDocument::Malformed { .. } => None,
            })
            .collect();
        self.reads
            .lock()
            .unwrap()
            .push((container.to_owned(), final_pass, ids));
        Ok(page)
    }
}

/// The last (open-ended) range of `container` as planned: its start.
async fn last_range(pool: &PgPool, container: &str) -> Value {
    sqlx::query_scalar(
        "select range_start from migration.work_ranges
          where job = 'backfill' and unit = $1 and range_end is null",
    )
    .bind(container)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_final_pass_reads_the_documents_written_after_planning_once_and_nothing_else(
    pool: PgPool,
) {
    let store = seeded_store("finalpass", 30).await;
    let before: BTreeMap<&str, BTreeSet<String>> = {
        let mut out = BTreeMap::new();
        for c in CONTAINERS {
            out.insert(
                c,
                all_documents(&store, c).await.iter().map(id_of).collect(),
            );
        }
        out
    };
    let extra = tempfile::tempdir().unwrap();
    generate::write_export(
        extra.path(),
        &GenerateOptions {
            accounts: 3,
            seed: 22,
            dirty: 0.0,
        },
    )
    .unwrap();
    let new_accounts: Vec<Value> = std::fs::read_to_string(extra.path().join("Accounts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rewritten: Vec<Value> = all_documents(&store, "Accounts")
        .await
        .into_iter()
        .take(5)
        .collect();
    let written: BTreeSet<String> = rewritten.iter().chain(&new_accounts).map(id_of).collect();
    assert_eq!(written.len(), 8);

    let source = CosmosSource::new(store.clone());
    let handle = store.container("Accounts").await.unwrap();
    let writes = async {
        for doc in rewritten
            .iter()
            .map(without_system_properties)
            .chain(new_accounts.iter().cloned())
        {
            let id = id_of(&doc);
            handle.upsert(id.clone(), &id, &doc).await.unwrap();
        }
    };
    let recorder = Recorder {
        inner: &source,
        reads: Mutex::default(),
        writes: tokio::sync::Mutex::new(Some(Box::pin(writes))),
    };
    let config = BackfillConfig {
        batch_rows: 7,
        workers: 2,
        ranges_per_container: 4,
        ..BackfillConfig::default()
    };
    let report = run_backfill(&pool, &recorder, &config, &|_, _| {})
        .await
        .unwrap();
    assert!(report.reconciles(), "{report:?}");
    assert_eq!(report.load_path, LoadPath::Initial);

    for container in CONTAINERS {
        let planned = last_range(&pool, container).await;
        assert!(
            planned["changes_after"].is_string() && planned.get("final_from").is_none(),
            "{container}: planned with the change feed's position: {planned}"
        );
        let first = recorder.read(container, false);
        let last = recorder.read(container, true);
        if container == "Accounts" {
            // the writes after planning, each once, and nothing else
            assert_eq!(last.keys().cloned().collect::<BTreeSet<_>>(), written);
            assert!(last.values().all(|n| *n == 1), "{last:?}");
        } else {
            assert!(last.is_empty(), "{container}: nothing written: {last:?}");
        }
        // the first passes read every document nobody wrote once
        for id in &before[container] {
            if !written.contains(id) {
                assert_eq!(first.get(id), Some(&1), "{container}: {id}");
            }
        }
        let reads: usize = first.values().chain(last.values()).sum();
        assert_eq!(
            report.job_totals[container].read, reads as u64,
            "{container}: every read counted once"
        );
        if container != "Accounts" {
            assert_eq!(reads, before[container].len(), "{container}");
        }
    }
    // only documents read twice (written during the run) can be set aside: the data is clean
    let summary = report.initial_load.as_ref().unwrap();
    let set_aside: u64 = summary.set_aside.documents.values().sum();
    assert!(set_aside <= written.len() as u64, "{:?}", summary.set_aside);

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
    assert_eq!(now.len(), before["Accounts"].len() + new_accounts.len());
    for doc in &now {
        let want = (
            doc["_ts"].as_i64().unwrap(),
            doc["_etag"].as_str().unwrap().to_owned(),
        );
        assert_eq!(versions.get(&id_of(doc)), Some(&want), "{}", id_of(doc));
    }
    store.delete_database().await.unwrap();
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn without_a_change_feed_the_last_range_reads_the_newest_second_again(pool: PgPool) {
    let store = seeded_store("nofeed", 20).await;
    let db = store.database_name().to_owned();
    // the change feed is a GET of a container's documents (queries are POSTs); 400 is not an
    // outage, so planning takes it for a server without a change feed
    let faults = support::Faults::new();
    let rule = faults
        .arm(json!({
            "pathContains": format!("/dbs/{db}/colls/Accounts/docs"),
            "method": "GET",
            "action": "respond",
            "status": 400,
            "count": 1000,
        }))
        .await;
    let source = CosmosSource::new(store.clone());
    let report = run_backfill(&pool, &source, &BackfillConfig::default(), &|_, _| {}).await;
    let hits = faults.hits(&rule).await;
    faults.disarm(&rule).await;
    let report = report.unwrap();
    assert!(hits > 0, "the change feed of Accounts was asked for");
    assert!(report.reconciles(), "{report:?}");

    let accounts = last_range(&pool, "Accounts").await;
    assert!(
        accounts["final_from"].is_i64() && accounts.get("changes_after").is_none(),
        "{accounts}"
    );
    let profiles = last_range(&pool, "UserProfiles").await;
    assert!(profiles["changes_after"].is_string(), "{profiles}");

    let documents = all_documents(&store, "Accounts").await.len() as u64;
    let in_postgres: i64 = sqlx::query_scalar("select count(*) from accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_postgres as u64, documents);
    // the documents of the newest second are read by the first pass and the final pass
    assert!(report.job_totals["Accounts"].read > documents);
    let profiles_in_cosmos = all_documents(&store, "UserProfiles").await.len() as u64;
    assert_eq!(report.job_totals["UserProfiles"].read, profiles_in_cosmos);
    store.delete_database().await.unwrap();
}
