//! Which documents a repository call wrote, exactly as Cosmos stored them.
//!
//! The dual-write router's phase 1 writes Cosmos through the Cosmos repositories and then copies
//! what Cosmos stored into PostgreSQL. The copy has to carry the stored document's version
//! (`_ts`, `_etag`) so that it goes through the same version guard as the backfill: a retried or
//! late copy then never overwrites a newer one. The repositories' ports return domain values,
//! not documents, so [`capture_writes`] runs a call with a task-local recorder that every write
//! of [`crate::repos`] reports to: creates and replaces ask Cosmos for the stored document in
//! the response (no extra round trip), deletes report the document id and key.
//!
//! Outside [`capture_writes`] nothing is recorded and writes do not ask for content.

use std::sync::{Arc, Mutex};

use mystira_cosmos_codec::codec;
use serde_json::Value;
use uuid::Uuid;

tokio::task_local! {
    static RECORDER: Arc<Mutex<Vec<WrittenDocument>>>;
}

/// One document a call wrote.
#[derive(Debug, Clone, PartialEq)]
pub enum WrittenDocument {
    /// Created or replaced: the document as Cosmos stored it, system properties included.
    Stored {
        container: codec::Container,
        document: Value,
    },
    /// Deleted. `key` is the document's key by the codec's rule; `source_ts` the `_ts` of the
    /// version that was deleted (the delete's tombstone: only a newer write may bring the
    /// document back).
    Deleted {
        container: codec::Container,
        document_id: String,
        key: Uuid,
        source_ts: Option<i64>,
    },
}

impl WrittenDocument {
    pub fn container(&self) -> codec::Container {
        match self {
            Self::Stored { container, .. } | Self::Deleted { container, .. } => *container,
        }
    }
}

/// Runs `call` and returns its output with every document it wrote, in the order written.
pub async fn capture_writes<F: Future>(call: F) -> (F::Output, Vec<WrittenDocument>) {
    let recorder = Arc::new(Mutex::new(Vec::new()));
    let output = RECORDER.scope(recorder.clone(), call).await;
    let written = std::mem::take(&mut *recorder.lock().unwrap_or_else(|e| e.into_inner()));
    (output, written)
}

/// Whether the current task is inside [`capture_writes`].
pub(crate) fn capturing() -> bool {
    RECORDER.try_with(|_| ()).is_ok()
}

/// Records a write, if the current task is capturing.
pub(crate) fn record(written: WrittenDocument) {
    let _ = RECORDER.try_with(|r| r.lock().unwrap_or_else(|e| e.into_inner()).push(written));
}
