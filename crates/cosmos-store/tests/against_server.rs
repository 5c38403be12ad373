//! The adapter against a real Cosmos-protocol server (`@vercel/cosmosdb-server` behind
//! `tools/cosmos-server/launch.js`), including injected 429s, 503s and dropped connections.
//! Each test works in its own database, so they run in parallel against one server.

use mystira_test_support::cosmos as support;

use std::collections::HashSet;
use std::time::Instant;

use mystira_cosmos_store::{CosmosStore, ErrorKind, QuerySpec, ResumeToken, TlsTrust};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use support::{Faults, fast_retry, fresh_store, seed};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    id: String,
    n: i64,
    #[serde(default)]
    group: i64,
}

#[tokio::test]
async fn creates_database_and_containers_and_reads_back_partition_key_paths() {
    let store = fresh_store("create", fast_retry(3)).await;
    assert!(
        !store.ensure_database().await.expect("second ensure"),
        "an existing database is reported as existing"
    );

    let accounts = store
        .ensure_container("Accounts", "/id")
        .await
        .expect("create Accounts");
    let signups = store
        .ensure_container("PendingSignups", "/email")
        .await
        .expect("create PendingSignups");
    assert_eq!(accounts.partition_key_paths(), ["/id"]);
    assert_eq!(signups.partition_key_paths(), ["/email"]);

    // Re-opening reads the definition from the service rather than from what we asked for.
    let reopened = store.container("PendingSignups").await.expect("open");
    assert_eq!(reopened.partition_key_paths(), ["/email"]);
    // Ensuring an existing container with another path keeps the container's own definition.
    let again = store
        .ensure_container("PendingSignups", "/id")
        .await
        .expect("ensure existing");
    assert_eq!(again.partition_key_paths(), ["/email"]);

    let missing = store
        .container("NoSuchContainer")
        .await
        .expect_err("missing");
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn upsert_read_replace_and_stale_etag_fails_with_precondition_failed() {
    let store = fresh_store("etag", fast_retry(3)).await;
    let signups = store
        .ensure_container("PendingSignups", "/email")
        .await
        .expect("container");
    let email = "someone@example.org";
    let first = json!({ "id": "s1", "email": email, "Code": "123456", "FailedAttempts": 0 });
    let etag1 = signups
        .upsert(email, "s1", &first)
        .await
        .expect("upsert")
        .expect("upsert returns an etag");

    let read = signups
        .read::<Value>(email, "s1")
        .await
        .expect("read")
        .expect("present");
    assert_eq!(read.value["Code"], "123456");
    assert_eq!(read.etag.as_deref(), Some(etag1.as_str()));

    let second = json!({ "id": "s1", "email": email, "Code": "123456", "FailedAttempts": 1 });
    let etag2 = signups
        .replace_if_match(email, "s1", &second, &etag1)
        .await
        .expect("replace with the current etag")
        .expect("etag");
    assert_ne!(etag1, etag2, "a write changes the etag");

    let third = json!({ "id": "s1", "email": email, "Code": "123456", "FailedAttempts": 9 });
    let stale = signups
        .replace_if_match(email, "s1", &third, &etag1)
        .await
        .expect_err("stale etag must be refused");
    assert_eq!(stale.kind(), ErrorKind::PreconditionFailed);
    assert!(!stale.is_retryable());
    assert_eq!(stale.attempts(), 1, "a 412 is not retried");
    assert!(
        !stale.to_string().contains(email),
        "errors never carry partition-key values: {stale}"
    );

    let now = signups
        .read::<Value>(email, "s1")
        .await
        .expect("read")
        .expect("present");
    assert_eq!(
        now.value["FailedAttempts"], 1,
        "the stale write changed nothing"
    );

    let duplicate = signups
        .create(email, "s1", &first)
        .await
        .expect_err("create of an existing id");
    assert_eq!(duplicate.kind(), ErrorKind::Conflict);
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn missing_item_reads_as_none_and_delete_is_idempotent() {
    let store = fresh_store("delete", fast_retry(3)).await;
    let accounts = store
        .ensure_container("Accounts", "/id")
        .await
        .expect("container");
    assert!(
        accounts
            .read::<Value>("nope", "nope")
            .await
            .expect("read of a missing item is not an error")
            .is_none()
    );

    accounts
        .upsert("a1", "a1", &json!({ "id": "a1", "Email": "x@example.org" }))
        .await
        .expect("upsert");
    assert!(accounts.delete("a1", "a1").await.expect("delete"));
    assert!(
        accounts
            .read::<Value>("a1", "a1")
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        !accounts.delete("a1", "a1").await.expect("second delete"),
        "deleting a missing item reports false"
    );
    let replace_missing = accounts
        .replace_if_match("a1", "a1", &json!({ "id": "a1" }), "whatever")
        .await
        .expect_err("replace of a missing item");
    assert!(
        matches!(
            replace_missing.kind(),
            ErrorKind::NotFound | ErrorKind::PreconditionFailed
        ),
        "{replace_missing}"
    );
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn parameterised_queries_filter_by_value_and_by_ts_watermark() {
    let store = fresh_store("query", fast_retry(3)).await;
    let docs = store
        .ensure_container("Docs", "/id")
        .await
        .expect("container");
    seed(&docs, 50).await;

    let mut pages = docs.query::<Doc>(
        QuerySpec::new("select * from c where c.n >= @min and c.group = @group")
            .param("@min", 20)
            .param("@group", 3),
        None,
    );
    let mut found = Vec::new();
    while let Some(page) = pages.next_page().await.expect("page") {
        found.extend(page.items.into_iter().map(|d| d.n));
    }
    found.sort_unstable();
    assert_eq!(found, vec![23, 33, 43]);

    let all_since = |since: i64| {
        docs.query::<Value>(
            QuerySpec::new("select * from c where c._ts >= @since").param("@since", since),
            None,
        )
    };
    let mut count = 0;
    let mut pages = all_since(0);
    while let Some(page) = pages.next_page().await.expect("page") {
        count += page.items.len();
    }
    assert_eq!(count, 50, "every document was written after epoch 0");
    let mut pages = all_since(i64::from(i32::MAX));
    let mut late = 0;
    while let Some(page) = pages.next_page().await.expect("page") {
        late += page.items.len();
    }
    assert_eq!(late, 0, "nothing was written after 2038");

    // A query scoped to one logical partition. The test server does not restrict results to
    // the partition named in the request (real Cosmos does), so the filter names it too.
    let mut pages = docs.query::<Doc>(
        QuerySpec::new("select * from c where c.id = @id and c.n >= @min")
            .param("@id", "doc-00007")
            .param("@min", 0)
            .in_partition("doc-00007"),
        None,
    );
    let page = pages.next_page().await.expect("page").expect("one page");
    assert_eq!(page.items.iter().map(|d| d.n).collect::<Vec<_>>(), vec![7]);
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn streaming_2500_in_pages_of_1000_and_resuming_from_a_saved_token_yields_each_once() {
    let store = fresh_store("stream", fast_retry(3)).await;
    let docs = store
        .ensure_container("Docs", "/id")
        .await
        .expect("container");
    seed(&docs, 2_500).await;

    // First run: read one page, save its token, and stop (a crash after the checkpoint).
    let mut first_run =
        docs.query_with_page_size::<Doc>(QuerySpec::new("select * from c"), None, 1_000);
    let page = first_run
        .next_page()
        .await
        .expect("page")
        .expect("first page");
    assert_eq!(page.items.len(), 1_000);
    let saved: String = page.resume_token().as_str().to_owned();
    let mut seen: Vec<String> = page.items.into_iter().map(|d| d.id).collect();
    drop(first_run);

    // Second run: resume from the persisted string.
    let mut resumed = docs.query_with_page_size::<Doc>(
        QuerySpec::new("select * from c"),
        Some(ResumeToken::from_string(saved)),
        1_000,
    );
    let mut sizes = Vec::new();
    let mut last_token = None;
    while let Some(page) = resumed.next_page().await.expect("page") {
        sizes.push(page.items.len());
        last_token = Some(page.resume_token().clone());
        seen.extend(page.items.into_iter().map(|d| d.id));
    }
    assert_eq!(sizes, vec![1_000, 500]);
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 2_500, "no document read twice");
    assert_eq!(distinct.len(), 2_500, "every document read");

    // Resuming after the last page yields nothing more.
    let mut after_end =
        docs.query_with_page_size::<Doc>(QuerySpec::new("select * from c"), last_token, 1_000);
    let mut extra = 0;
    while let Some(page) = after_end.next_page().await.expect("page") {
        extra += page.items.len();
    }
    assert_eq!(extra, 0);
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn throttled_read_is_retried_after_the_servers_retry_after_and_succeeds() {
    let store = fresh_store("throttle-ok", fast_retry(5)).await;
    let docs = store
        .ensure_container("Docs", "/id")
        .await
        .expect("container");
    docs.upsert("d1", "d1", &json!({ "id": "d1", "n": 1 }))
        .await
        .expect("upsert");
    let faults = Faults::new();
    let rule = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/colls/Docs/docs/d1", store.database_name()),
            "method": "GET", "action": "respond", "status": 429, "retryAfterMs": 60, "count": 2
        }))
        .await;

    let started = Instant::now();
    let read = docs.read::<Doc>("d1", "d1").await.expect("retried read");
    assert_eq!(read.map(|v| v.value.n), Some(1));
    assert_eq!(
        faults.hits(&rule).await,
        2,
        "both 429s were seen and retried"
    );
    assert!(
        started.elapsed().as_millis() >= 120,
        "the server's retry-after (2 x 60 ms) was honoured, took {:?}",
        started.elapsed()
    );
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn persistent_throttling_surfaces_throttled_after_exactly_the_attempt_bound() {
    let store = fresh_store("throttle-bound", fast_retry(3)).await;
    let docs = store
        .ensure_container("Docs", "/id")
        .await
        .expect("container");
    let faults = Faults::new();
    let rule = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/colls/Docs/docs/d1", store.database_name()),
            "method": "GET", "action": "respond", "status": 429, "retryAfterMs": 5, "count": 1000
        }))
        .await;

    let err = docs
        .read::<Doc>("d1", "d1")
        .await
        .expect_err("always throttled");
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert!(err.is_retryable());
    assert_eq!(err.attempts(), 3);
    // The SDK's own 429 retries are off: 3 attempts means 3 requests, not 3 x 10.
    assert_eq!(faults.hits(&rule).await, 3);
    faults.disarm(&rule).await;
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn unavailable_write_is_retried_and_succeeds() {
    let store = fresh_store("unavailable", fast_retry(5)).await;
    let docs = store
        .ensure_container("Docs", "/id")
        .await
        .expect("container");
    let faults = Faults::new();
    let rule = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/colls/Docs/docs", store.database_name()),
            "method": "POST", "action": "respond", "status": 503, "count": 2
        }))
        .await;
    docs.upsert("d1", "d1", &json!({ "id": "d1", "n": 5 }))
        .await
        .expect("upsert after two 503s");
    let hits = faults.hits(&rule).await;
    assert_eq!(hits, 2);
    let read = docs
        .read::<Doc>("d1", "d1")
        .await
        .expect("read")
        .expect("written");
    assert_eq!(read.value.n, 5);
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn dropped_connection_is_retried_and_persistent_drops_surface_transport() {
    let store = fresh_store("drop", fast_retry(3)).await;
    let docs = store
        .ensure_container("Docs", "/id")
        .await
        .expect("container");
    docs.upsert("d1", "d1", &json!({ "id": "d1", "n": 7 }))
        .await
        .expect("upsert");
    let faults = Faults::new();
    let path = format!("/dbs/{}/colls/Docs/docs/d1", store.database_name());

    let once = faults
        .arm(json!({ "pathContains": path, "method": "GET", "action": "drop", "count": 1 }))
        .await;
    let read = docs
        .read::<Doc>("d1", "d1")
        .await
        .expect("read after one drop");
    assert_eq!(read.map(|v| v.value.n), Some(7));
    assert_eq!(faults.hits(&once).await, 1);

    let always = faults
        .arm(json!({ "pathContains": path, "method": "GET", "action": "drop", "count": 1000 }))
        .await;
    let err = docs
        .read::<Doc>("d1", "d1")
        .await
        .expect_err("always dropped");
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert!(err.is_retryable());
    assert_eq!(err.attempts(), 3);
    let hits = faults.hits(&always).await;
    println!("persistent drop: {hits} requests reached the server for 3 attempts");
    assert!(hits >= 3, "each attempt reached the server, saw {hits}");
    faults.disarm(&always).await;
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn a_503_between_pages_is_retried_from_the_last_page_without_loss_or_repeat() {
    let store = fresh_store("page-fault", fast_retry(5)).await;
    let docs = store
        .ensure_container("Docs", "/id")
        .await
        .expect("container");
    seed(&docs, 1_200).await;
    let faults = Faults::new();

    let mut pages = docs.query_with_page_size::<Doc>(QuerySpec::new("select * from c"), None, 500);
    let first = pages.next_page().await.expect("page").expect("first page");
    let mut seen: Vec<String> = first.items.into_iter().map(|d| d.id).collect();
    let rule = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/colls/Docs/docs", store.database_name()),
            "method": "POST", "action": "respond", "status": 503, "count": 1
        }))
        .await;
    while let Some(page) = pages.next_page().await.expect("page after a 503") {
        seen.extend(page.items.into_iter().map(|d| d.id));
    }
    assert_eq!(faults.hits(&rule).await, 1, "the fault fired");
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 1_200, "no page repeated");
    assert_eq!(distinct.len(), 1_200, "no page lost");
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn ca_file_without_matching_ssl_cert_file_is_refused_with_the_fix() {
    let other = std::env::temp_dir().join(format!("not-the-cert-{}.pem", std::process::id()));
    std::fs::copy(support::cert_file(), &other).expect("copy cert");
    let err =
        CosmosStore::connect(support::config("unused").with_tls(TlsTrust::CaFile(other.clone())))
            .await
            .expect_err("SSL_CERT_FILE points elsewhere");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("SSL_CERT_FILE"), "{err}");
    std::fs::remove_file(other).expect("remove copy");
}

#[tokio::test]
async fn streaming_10000_documents_reports_read_throughput() {
    let store = fresh_store("throughput", fast_retry(3)).await;
    let docs = store
        .ensure_container("Docs", "/id")
        .await
        .expect("container");
    let seeded = Instant::now();
    seed(&docs, 10_000).await;
    let seed_time = seeded.elapsed();

    let started = Instant::now();
    let mut pages = docs.read_all::<Value>(None);
    let mut count = 0usize;
    let mut page_count = 0usize;
    while let Some(page) = pages.next_page().await.expect("page") {
        count += page.items.len();
        page_count += 1;
    }
    let elapsed = started.elapsed();
    assert_eq!(count, 10_000);
    assert_eq!(page_count, 10, "pages of the default 1,000");
    println!(
        "cosmos test server: wrote 10000 docs in {seed_time:?} ({:.0} docs/s, 32 concurrent); \
         read them in {page_count} pages in {elapsed:?} = {:.0} docs/s",
        10_000.0 / seed_time.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    store.delete_database().await.expect("cleanup");
}
