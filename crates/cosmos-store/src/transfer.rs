//! Moving export files (see `mystira_cosmos_codec::export`) in and out of a Cosmos database:
//! `cosmos import` and `cosmos export`.

use std::path::Path;

use futures::StreamExt;
use mystira_cosmos_codec::export::{DocumentReader, ExportDir, ExportWriter};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::store::CosmosStore;
use crate::{Container, PartitionKey};

/// The containers of the user domain and their partition keys when we create them.
pub const USER_DOMAIN_CONTAINERS: [(&str, &str); 3] = [
    ("Accounts", "/id"),
    ("UserProfiles", "/id"),
    ("PendingSignups", "/email"),
];

/// What an import did, per container.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ImportCounts {
    pub imported: u64,
    /// Lines that are not documents or documents without the partition-key field, with their
    /// file and line (never their content).
    pub rejected: Vec<String>,
}

/// Loads every `<Container>.jsonl` of `dir` into the store's database (created, with the
/// containers, if missing), upserting `concurrency` documents at a time. A bad line is
/// reported and skipped; the rest continues.
pub async fn import_dir(
    store: &CosmosStore,
    dir: &Path,
    concurrency: usize,
) -> Result<Vec<(String, ImportCounts)>> {
    let export = ExportDir::open(dir).map_err(|e| config_error("open export", e.to_string()))?;
    store.ensure_database().await?;
    let mut out = Vec::new();
    for file in &export.files {
        let pk_path = USER_DOMAIN_CONTAINERS
            .iter()
            .find(|(name, _)| *name == file.container)
            .map_or("/id", |(_, pk)| *pk);
        let container = store.ensure_container(&file.container, pk_path).await?;
        let reader = DocumentReader::open(&file.path, &file.container)
            .map_err(|e| config_error("read export", e.to_string()))?;
        let mut counts = ImportCounts::default();
        let mut docs = Vec::new();
        for item in reader {
            match item {
                Ok(doc) => match partition_value(&container, &doc.value) {
                    Some(pk) => docs.push((pk, doc.value)),
                    None => counts.rejected.push(format!(
                        "{}:{}: no value for the partition key",
                        file.path.display(),
                        doc.line_no
                    )),
                },
                Err(e) => counts.rejected.push(e.to_string()),
            }
            if docs.len() >= 1000 {
                counts.imported +=
                    upsert_all(&container, std::mem::take(&mut docs), concurrency).await?;
            }
        }
        counts.imported += upsert_all(&container, docs, concurrency).await?;
        out.push((file.container.clone(), counts));
    }
    Ok(out)
}

async fn upsert_all(
    container: &Container,
    docs: Vec<(String, Value)>,
    concurrency: usize,
) -> Result<u64> {
    let results: Vec<Result<()>> = futures::stream::iter(docs)
        .map(|(pk, doc)| async move {
            let id = doc
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            container
                .upsert(PartitionKey::from(pk), &id, &strip_system_fields(doc))
                .await
                .map(|_| ())
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut n = 0;
    for r in results {
        r?;
        n += 1;
    }
    Ok(n)
}

/// Writes every container of the user domain that exists in the store to `dir`, with a
/// manifest. Documents are written as Cosmos returns them, system fields included.
pub async fn export_dir(store: &CosmosStore, dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut writer =
        ExportWriter::create(dir).map_err(|e| config_error("create export", e.to_string()))?;
    let mut out = Vec::new();
    for (name, _) in USER_DOMAIN_CONTAINERS {
        let container = match store.container(name).await {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        writer
            .add_container(name)
            .map_err(|e| config_error("write export", e.to_string()))?;
        let mut pages = container.read_all::<Value>(None);
        let mut n = 0u64;
        while let Some(page) = pages.next_page().await? {
            for doc in &page.items {
                writer
                    .write(name, doc)
                    .map_err(|e| config_error("write export", e.to_string()))?;
                n += 1;
            }
        }
        out.push((name.to_owned(), n));
    }
    writer
        .finish()
        .map_err(|e| config_error("write export", e.to_string()))?;
    Ok(out)
}

/// The document's value for the container's (single-path) partition key.
fn partition_value(container: &Container, doc: &Value) -> Option<String> {
    let path = container.partition_key_paths().first()?;
    let mut value = doc;
    for part in path.trim_start_matches('/').split('/') {
        value = value.get(part)?;
    }
    value.as_str().map(str::to_owned)
}

/// Cosmos rejects or overwrites its own system fields on write; drop them so an export taken
/// from one account can be imported into another (also used by `restore`).
pub fn strip_system_fields(mut doc: Value) -> Value {
    if let Some(obj) = doc.as_object_mut() {
        for field in ["_rid", "_self", "_etag", "_attachments", "_ts"] {
            obj.shift_remove(field);
        }
    }
    doc
}

fn config_error(op: &'static str, message: String) -> Error {
    Error::new(ErrorKind::Config, op, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripping_system_fields_keeps_the_other_properties_in_their_order() {
        // system fields anywhere (Cosmos appends them; an export may hold them elsewhere): the
        // app's properties stay in the order it wrote them (`shift_remove`, not `swap_remove`)
        let text = r#"{"id":"a","_rid":"r","Zeta":1,"_ts":5,"Alpha":{"b":1,"a":2},"Mid":true,"_etag":"e","Last":null}"#;
        let doc: Value = serde_json::from_str(text).expect("json");
        assert_eq!(
            serde_json::to_string(&strip_system_fields(doc)).expect("serializes"),
            r#"{"id":"a","Zeta":1,"Alpha":{"b":1,"a":2},"Mid":true,"Last":null}"#
        );
    }
}
