//! The Cosmos-protocol test server started by `tools/cosmos-server/start`: its key, a client on
//! a database of its own per test, seeded containers and the user domain's containers, and the
//! server's `/_faults` admin endpoint.
//!
//! Environment (all required; a missing one fails the test with the fix, never skips it):
//! - `COSMOS_ENDPOINT`: the server's endpoint, e.g. `https://127.0.0.1:PORT/`;
//! - `COSMOS_CERT_FILE`: its self-signed certificate;
//! - `SSL_CERT_FILE`: the same file (the SDK trusts extra roots only through it).
//!
//! `eval "$(tools/cosmos-server/start)"` exports all three.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt as _;
use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_cosmos_store::{
    Container, CosmosConfig, CosmosRepositories, CosmosStore, RetryPolicy, TlsTrust, import_dir,
};
use mystira_domain::Secret;
use serde_json::{Value, json};

/// The Cosmos emulator's published, well-known key (not a secret; the test server ignores it).
pub const EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the Cosmos test server; run \
             `eval \"$(tools/cosmos-server/start)\"` first (it exports COSMOS_ENDPOINT, \
             COSMOS_CERT_FILE and SSL_CERT_FILE)"
        )
    })
}

/// The test server's endpoint (`COSMOS_ENDPOINT`).
pub fn endpoint() -> String {
    required_env("COSMOS_ENDPOINT")
}

/// The test server's certificate (`COSMOS_CERT_FILE`).
pub fn cert_file() -> PathBuf {
    PathBuf::from(required_env("COSMOS_CERT_FILE"))
}

/// A database name no other test uses, so tests can run in parallel on one server.
pub fn unique_db(test: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{test}-{}", &suffix[..12])
}

/// Fast retries so fault tests stay quick; the bounds themselves are what is under test.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        max_total_wait_ms: 5_000,
        base_backoff_ms: 5,
        max_backoff_ms: 50,
    }
}

/// The test server's settings for `database` (the emulator's key, its certificate trusted).
pub fn config(database: &str) -> CosmosConfig {
    CosmosConfig::new(endpoint(), Secret::new(EMULATOR_KEY.to_owned()))
        .with_database(database)
        .with_tls(TlsTrust::CaFile(cert_file()))
}

/// A store on a fresh database (created) for `test`.
pub async fn fresh_store(test: &str, retry: RetryPolicy) -> CosmosStore {
    let store = CosmosStore::connect(config(&unique_db(test)).with_retry(retry))
        .await
        .expect("connect to the cosmos test server");
    assert!(
        store.ensure_database().await.expect("create database"),
        "a fresh database name must not exist yet"
    );
    store
}

/// A fresh database (named for `test`) holding the data set `options` generates, imported
/// with `cosmos import`'s upserts (what the app does when it writes to Cosmos directly), and
/// the export files it was imported from.
pub async fn generated_store(
    test: &str,
    options: &GenerateOptions,
) -> (CosmosStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    generate::write_export(dir.path(), options).expect("generate the export files");
    let store = CosmosStore::connect(config(&unique_db(test)))
        .await
        .expect("connect to the cosmos test server");
    import_dir(&store, dir.path(), 16)
        .await
        .expect("import the generated documents");
    (store, dir)
}

/// Creates `count` documents `{id, n, group}` with `id = doc-00000..`, 32 at a time.
pub async fn seed(container: &Container, count: usize) {
    futures::stream::iter(0..count)
        .map(|n| async move {
            let id = format!("doc-{n:05}");
            let doc = json!({ "id": id, "n": n, "group": n % 10 });
            container
                .upsert(id.clone(), &id, &doc)
                .await
                .expect("seed upsert");
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// An HTTP client that trusts the test server's certificate, for raw requests beside the SDK.
pub fn http_client() -> reqwest::Client {
    let pem = std::fs::read(cert_file()).expect("read COSMOS_CERT_FILE");
    let cert = reqwest::Certificate::from_pem(&pem).expect("COSMOS_CERT_FILE is PEM");
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build admin http client")
}

/// Client for the launcher's fault-injection admin endpoint.
#[derive(Debug)]
pub struct Faults {
    http: reqwest::Client,
    base: String,
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl Faults {
    pub fn new() -> Self {
        Self {
            http: http_client(),
            base: endpoint().trim_end_matches('/').to_owned(),
        }
    }

    /// Arms a rule (see tools/cosmos-server/launch.js); returns its id.
    pub async fn arm(&self, rule: Value) -> String {
        let response = self
            .http
            .post(format!("{}/_faults", self.base))
            .body(rule.to_string())
            .send()
            .await
            .expect("arm fault");
        assert_eq!(response.status().as_u16(), 201, "fault rule rejected");
        let body: Value =
            serde_json::from_str(&response.text().await.expect("fault body")).expect("json");
        body["id"].as_str().expect("rule id").to_owned()
    }

    /// How many requests the rule has intercepted so far.
    pub async fn hits(&self, id: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/_faults/{id}", self.base))
            .send()
            .await
            .expect("read fault")
            .text()
            .await
            .expect("fault body");
        let body: Value = serde_json::from_str(&text).expect("json");
        body["hits"].as_u64().expect("hits")
    }

    pub async fn disarm(&self, id: &str) {
        self.http
            .delete(format!("{}/_faults/{id}", self.base))
            .send()
            .await
            .expect("disarm fault");
    }
}

/// A fresh database with the three user-domain containers (`Accounts` and `UserProfiles` on
/// `/id`, `PendingSignups` on `/email`) and every repository on them.
///
/// The test server mints resource ids in standard base64, so now and then a container's `_rid`
/// holds a `/`, which azure_data_cosmos 1.0 refuses when it opens the container ("invalid
/// container _rid"; real Cosmos never writes `/` in a rid). Such a database is dropped and the
/// setup retried on a new one; any other failure fails the test.
pub async fn user_domain(test: &str) -> (CosmosStore, CosmosRepositories) {
    for _ in 0..5 {
        let store = fresh_store(test, fast_retry(3)).await;
        match CosmosRepositories::ensure(&store).await {
            Ok(repos) => return (store, repos),
            Err(e) if format!("{e:?}").contains("invalid container _rid") => {
                store
                    .delete_database()
                    .await
                    .expect("drop the unusable database");
            }
            Err(e) => panic!("create the user-domain containers: {e:?}"),
        }
    }
    panic!("the test server minted unusable container rids five times in a row");
}

/// The document as an independent HTTP client reads it from the test server: a plain GET on
/// the REST path, no SDK (the server does not check the signature).
pub async fn raw_document(database: &str, container: &str, id: &str, pk: &str) -> Value {
    let url = format!(
        "{}/dbs/{database}/colls/{container}/docs/{}",
        endpoint().trim_end_matches('/'),
        id.replace('|', "%7C")
    );
    let response = http_client()
        .get(url)
        .header("x-ms-documentdb-partitionkey", json!([pk]).to_string())
        .header("x-ms-version", "2020-07-15")
        .send()
        .await
        .expect("GET the raw document");
    assert_eq!(response.status().as_u16(), 200, "GET {container}/{id}");
    serde_json::from_str(&response.text().await.expect("document body")).expect("document json")
}

/// Every document of `container`, as the server returns them (system properties included).
pub async fn all_documents(store: &CosmosStore, container: &str) -> Vec<Value> {
    let handle = store
        .container(container)
        .await
        .expect("open the container");
    let mut pages = handle.read_all::<Value>(None);
    let mut out = Vec::new();
    while let Some(page) = pages.next_page().await.expect("read a page") {
        out.extend(page.items);
    }
    out
}

/// The document without the system properties the service sets (`_rid`, `_etag`, `_ts`, ...).
pub fn without_system_properties(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(map) = doc.as_object_mut() {
        map.retain(|k, _| !k.starts_with('_'));
    }
    doc
}
