//! `cosmos import` then `cosmos export` against the real Cosmos-protocol server gives back the
//! same documents, and a malformed line is reported with its file and line without stopping
//! the rest.

use mystira_test_support::cosmos as support;

use std::collections::BTreeMap;
use std::path::Path;

use mystira_cosmos_codec::export::{DocumentReader, ExportDir};
use mystira_cosmos_codec::generate::{GenerateOptions, write_export};
use mystira_cosmos_store::{CosmosStore, export_dir, import_dir};
use serde_json::Value;
use support::{config, fast_retry, unique_db};

const SYSTEM_FIELDS: [&str; 5] = ["_rid", "_self", "_etag", "_attachments", "_ts"];

/// Every document of an export directory by (container, id), without Cosmos system fields.
fn documents(dir: &Path) -> BTreeMap<(String, String), Value> {
    let export = ExportDir::open(dir).expect("open export");
    let mut out = BTreeMap::new();
    for file in &export.files {
        for doc in DocumentReader::open(&file.path, &file.container).expect("read") {
            let Ok(doc) = doc else { continue };
            let mut value = doc.value;
            let obj = value.as_object_mut().expect("object");
            for f in SYSTEM_FIELDS {
                obj.remove(f);
            }
            let id = obj["id"].as_str().expect("id").to_owned();
            out.insert((file.container.clone(), id), numbers_as_f64(value));
        }
    }
    out
}

/// JSON numbers as doubles: the server is JavaScript, so `5.0` comes back as `5` (the same
/// number, which is also how Cosmos itself stores numbers).
fn numbers_as_f64(value: Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map_or(Value::Number(n), Value::from),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, numbers_as_f64(v)))
                .collect(),
        ),
        other => other,
    }
}

async fn store(test: &str) -> CosmosStore {
    CosmosStore::connect(config(&unique_db(test)).with_retry(fast_retry(5)))
        .await
        .expect("connect")
}

#[tokio::test]
async fn import_then_export_round_trips_every_document() {
    let generated = tempfile::tempdir().expect("tempdir");
    write_export(
        generated.path(),
        &GenerateOptions {
            accounts: 60,
            seed: 9,
            dirty: 0.1,
        },
    )
    .expect("generate");
    let store = store("roundtrip").await;
    let imported = import_dir(&store, generated.path(), 16)
        .await
        .expect("import");
    assert!(
        imported.iter().all(|(_, c)| c.rejected.is_empty()),
        "{imported:?}"
    );

    let exported = tempfile::tempdir().expect("tempdir");
    let counts = export_dir(&store, exported.path()).await.expect("export");
    let before = documents(generated.path());
    let after = documents(exported.path());
    assert_eq!(
        counts.iter().map(|(_, n)| n).sum::<u64>() as usize,
        before.len()
    );
    let missing: Vec<_> = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .take(3)
        .collect();
    let extra: Vec<_> = after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .take(3)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    // name the first differing document and field, not whole documents
    for (key, b) in &before {
        let a = &after[key];
        if a != b {
            let fields: Vec<_> = b
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(f, v)| a.get(f.as_str()) != Some(v))
                .map(|(f, _)| f.clone())
                .collect();
            panic!("{key:?} differs in {fields:?}");
        }
    }
    // the export is a valid export: its manifest matches its files
    ExportDir::open(exported.path())
        .expect("open")
        .verify()
        .expect("manifest matches");
    // and every exported document carries the server's system fields
    let raw = std::fs::read_to_string(exported.path().join("Accounts.jsonl")).expect("read");
    assert!(
        raw.lines()
            .all(|l| l.contains("\"_ts\"") && l.contains("\"_etag\""))
    );
}

#[tokio::test]
async fn a_malformed_line_is_reported_with_file_and_line_and_the_rest_imports() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Accounts.jsonl"),
        "{\"id\":\"a1\",\"Email\":\"a@example.com\"}\n{not json\n{\"id\":\"a2\",\"Email\":\"b@example.com\"}\n",
    )
    .expect("write");
    let store = store("malformed").await;
    let imported = import_dir(&store, dir.path(), 4).await.expect("import");
    let (container, counts) = &imported[0];
    assert_eq!(container, "Accounts");
    assert_eq!(counts.imported, 2);
    assert_eq!(counts.rejected.len(), 1);
    assert!(
        counts.rejected[0].contains("Accounts.jsonl:2"),
        "{:?}",
        counts.rejected
    );
    assert!(
        !counts.rejected[0].contains("not json"),
        "the line's content must not be echoed"
    );
}
