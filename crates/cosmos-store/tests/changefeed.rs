//! The change-feed reader against the real Cosmos-protocol server (our launcher serves an
//! incremental latest-version feed: `tools/cosmos-server/launch.js`). Each test has its own
//! database, so they run in parallel on one server.

use mystira_test_support::cosmos as support;

use std::collections::BTreeMap;

use mystira_cosmos_store::{ChangeFeedToken, Container, FeedMode, FeedRangeKey, FeedStart};
use serde_json::{Value, json};
use support::{Faults, fast_retry, fresh_store, seed};

async fn container(test: &str) -> (mystira_cosmos_store::CosmosStore, Container) {
    let store = fresh_store(test, fast_retry(5)).await;
    let container = store
        .ensure_container("Docs", "/id")
        .await
        .expect("create container");
    (store, container)
}

async fn only_range(container: &Container) -> FeedRangeKey {
    let ranges = container.feed_ranges().await.expect("feed ranges");
    assert_eq!(ranges.len(), 1, "the test server reports one range");
    ranges.into_iter().next().expect("one range")
}

/// Reads pages until the feed is caught up; returns (documents by id with their `n`, pages
/// with documents, the last token). Bounded: fails rather than polling forever.
async fn drain(
    container: &Container,
    range: &FeedRangeKey,
    start: FeedStart,
    page_size: u32,
) -> (Vec<Value>, usize, ChangeFeedToken) {
    let mut feed =
        container.change_feed_with_page_size(range, start, FeedMode::LatestVersion, page_size);
    let mut documents = Vec::new();
    for pages in 0..10_000 {
        let page = feed.next_page().await.expect("change feed page");
        if page.is_caught_up() {
            return (documents, pages, page.token().clone());
        }
        documents.extend(page.documents);
    }
    panic!("the feed never caught up");
}

fn ids(documents: &[Value]) -> Vec<String> {
    documents
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn reads_every_document_in_pages_then_reports_caught_up() {
    let (store, container) = container("cf-pages").await;
    let range = only_range(&container).await;
    seed(&container, 250).await;

    let (documents, pages, _) = drain(&container, &range, FeedStart::Beginning, 100).await;
    assert_eq!(pages, 3, "250 documents in pages of 100");
    let mut seen = ids(&documents);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 250, "each document exactly once");
    for doc in &documents {
        assert!(
            doc["_ts"].is_i64() && doc["_etag"].is_string(),
            "system properties kept"
        );
        assert!(doc.get("_lsn").is_none(), "the feed-only _lsn is removed");
    }
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn resumes_from_a_saved_token_with_only_later_changes() {
    let (store, container) = container("cf-resume").await;
    let range = only_range(&container).await;
    seed(&container, 20).await;
    let (first, _, token) = drain(&container, &range, FeedStart::Beginning, 7).await;
    assert_eq!(first.len(), 20);

    // The token survives a round trip through JSON (a checkpoint row) and a new reader.
    let stored = serde_json::to_value(&token).expect("token to json");
    let restored: ChangeFeedToken = serde_json::from_value(stored).expect("token from json");
    for n in 100..105 {
        let id = format!("late-{n}");
        container
            .upsert(id.clone(), &id, &json!({"id": id, "n": n}))
            .await
            .expect("write after checkpoint");
    }
    let (later, _, _) = drain(&container, &range, FeedStart::Token(restored), 2).await;
    assert_eq!(
        ids(&later),
        ["late-100", "late-101", "late-102", "late-103", "late-104"],
        "only the changes after the token, in modification order"
    );
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn caught_up_feed_answers_empty_pages_and_keeps_its_position() {
    let (store, container) = container("cf-304").await;
    let range = only_range(&container).await;
    seed(&container, 3).await;
    let mut feed = container.change_feed(&range, FeedStart::Beginning, FeedMode::LatestVersion);
    let page = feed.next_page().await.expect("first page");
    assert_eq!(page.documents.len(), 3);
    let token = page.token().clone();
    for _ in 0..3 {
        let empty = feed.next_page().await.expect("caught-up page");
        assert!(empty.is_caught_up(), "nothing changed: an empty page");
    }
    // The position did not move: one more write is the next (and only) change.
    container
        .upsert("x", "x", &json!({"id": "x", "n": 1}))
        .await
        .expect("write");
    let next = feed.next_page().await.expect("page after the write");
    assert_eq!(ids(&next.documents), ["x"]);
    let (from_saved, _, _) = drain(&container, &range, FeedStart::Token(token), 10).await;
    assert_eq!(
        ids(&from_saved),
        ["x"],
        "the saved token sees the same single change"
    );
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn updates_reappear_once_at_their_newest_version() {
    let (store, container) = container("cf-updates").await;
    let range = only_range(&container).await;
    seed(&container, 5).await;
    let (_, _, token) = drain(&container, &range, FeedStart::Beginning, 100).await;

    // doc-00001 is updated three times, doc-00003 once, in between a new document.
    for version in 1..=3 {
        container
            .upsert(
                "doc-00001",
                "doc-00001",
                &json!({"id": "doc-00001", "n": version}),
            )
            .await
            .expect("update");
    }
    container
        .upsert("new", "new", &json!({"id": "new", "n": 0}))
        .await
        .expect("create");
    container
        .upsert(
            "doc-00003",
            "doc-00003",
            &json!({"id": "doc-00003", "n": 30}),
        )
        .await
        .expect("update");

    let (changes, _, _) = drain(&container, &range, FeedStart::Token(token), 100).await;
    assert_eq!(
        ids(&changes),
        ["doc-00001", "new", "doc-00003"],
        "each changed document once, in the order of its last change"
    );
    let by_id: BTreeMap<String, i64> = changes
        .iter()
        .map(|d| {
            (
                d["id"].as_str().expect("id").to_owned(),
                d["n"].as_i64().expect("n"),
            )
        })
        .collect();
    assert_eq!(by_id["doc-00001"], 3, "the newest version");
    let current = container
        .read::<Value>("doc-00001", "doc-00001")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        changes[0]["_etag"], current.value["_etag"],
        "the feed carries the stored version's _etag"
    );
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn starting_from_now_skips_what_was_there() {
    let (store, container) = container("cf-now").await;
    let range = only_range(&container).await;
    seed(&container, 10).await;
    let mut feed = container.change_feed(&range, FeedStart::Now, FeedMode::LatestVersion);
    assert!(feed.next_page().await.expect("first poll").is_caught_up());
    container
        .upsert("after", "after", &json!({"id": "after", "n": 1}))
        .await
        .expect("write");
    let page = feed.next_page().await.expect("poll");
    assert_eq!(ids(&page.documents), ["after"]);
    store.delete_database().await.expect("cleanup");
}

#[tokio::test]
async fn a_transient_failure_between_pages_neither_repeats_nor_skips_a_page() {
    let (store, container) = container("cf-fault").await;
    let range = only_range(&container).await;
    seed(&container, 30).await;
    let db = store.database_name().to_owned();
    let mut feed = container.change_feed_with_page_size(
        &range,
        FeedStart::Beginning,
        FeedMode::LatestVersion,
        10,
    );
    let first = feed.next_page().await.expect("first page");
    let faults = Faults::new();
    let rule = faults
        .arm(json!({
            "pathContains": format!("/dbs/{db}/colls/"),
            "method": "GET",
            "action": "respond",
            "status": 503,
            "count": 2,
        }))
        .await;
    let mut documents = first.documents;
    loop {
        let page = feed.next_page().await.expect("page after transient 503s");
        if page.is_caught_up() {
            break;
        }
        documents.extend(page.documents);
    }
    assert!(faults.hits(&rule).await >= 1, "the fault was hit");
    faults.disarm(&rule).await;
    let mut seen = ids(&documents);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30);
    assert_eq!(documents.len(), 30, "no page repeated");
    store.delete_database().await.expect("cleanup");
}

/// Waits (bounded) until the wall clock is past `t`.
async fn clock_past(t: chrono::DateTime<chrono::Utc>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while chrono::Utc::now() <= t {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock did not advance"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn starting_from_a_point_in_time_reads_only_documents_changed_since() {
    let (store, container) = container("cf-pit").await;
    let range = only_range(&container).await;
    seed(&container, 10).await;
    // _ts has one-second resolution: start at the next whole second after the seed.
    let now = chrono::Utc::now();
    let start = chrono::DateTime::from_timestamp(now.timestamp() + 1, 0).expect("time");
    clock_past(start).await;
    container
        .upsert(
            "doc-00002",
            "doc-00002",
            &json!({"id": "doc-00002", "n": 20}),
        )
        .await
        .expect("update");
    container
        .upsert("later", "later", &json!({"id": "later", "n": 1}))
        .await
        .expect("create");
    let (changes, _, _) = drain(&container, &range, FeedStart::PointInTime(start), 100).await;
    assert_eq!(ids(&changes), ["doc-00002", "later"]);
    store.delete_database().await.expect("cleanup");
}
