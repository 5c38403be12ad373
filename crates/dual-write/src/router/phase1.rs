//! Phase 1's write path (Cosmos first, then PostgreSQL): a pending PostgreSQL change of the
//! aggregate is delivered to Cosmos before the write, and the documents Cosmos stored are
//! copied into PostgreSQL through the version guard, or journalled (table, else local file)
//! when that fails; a copy held back by an undelivered PostgreSQL change is not acknowledged.

use std::time::{SystemTime, UNIX_EPOCH};

use mystira_copy::apply::{Copied, copy_record};
use mystira_cosmos_codec::codec::Container;
use mystira_cosmos_store::capture::WrittenDocument;
use mystira_domain::RepoError;
use mystira_domain::ports::RepoResult;
use mystira_postgres::journal::{self, JournalOp, JournalRecord};
use mystira_postgres::outbox;
use uuid::Uuid;

use super::{DualWriteRouter, Phase1Copy, Store};
use crate::relay;

impl DualWriteRouter {
    /// Phase 1's first half, for a write that names its aggregate: a PostgreSQL change of the
    /// aggregate that Cosmos has not taken yet (a pending outbox row, left by a phase-2 write
    /// before a rollback) is delivered to Cosmos before the write goes there, so that the write
    /// lands on top of it in Cosmos and its copy is not held back (docs/dual-write.md, "Who wins
    /// an aggregate"). If the delivery fails, nothing has been written and the call fails. If
    /// PostgreSQL cannot say (it is unreachable), the write goes ahead: phase 1 keeps taking
    /// writes while PostgreSQL is down, and a copy that meets a pending row later is held back
    /// and put on record by the replay.
    pub(super) async fn deliver_pending_first(
        &self,
        container: Container,
        key: Uuid,
    ) -> RepoResult<()> {
        let pending = tokio::time::timeout(
            self.0.config.postgres_timeout,
            outbox::has_pending(&self.0.pool, container.name(), key),
        )
        .await;
        match pending {
            Ok(Ok(false)) => Ok(()),
            Ok(Ok(true)) => {
                let aggregate = outbox::PendingAggregate {
                    container: container.name().to_owned(),
                    key,
                };
                match relay::deliver(&self.0.pool, &self.0.cosmos.writer, aggregate).await {
                    Ok(_) => {
                        self.count(|c| &c.delivered_before_write, 1);
                        Ok(())
                    }
                    Err(e) => Err(RepoError::Unavailable(format!(
                        "this {container} document has a PostgreSQL change that Cosmos has not \
                         taken yet, and delivering it before the write failed ({}); nothing \
                         was written: retry the call",
                        crate::journal::error_class(&e)
                    ))),
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(%container, class = crate::journal::error_class(&e), "cannot check the outbox before a phase-1 write; writing");
                Ok(())
            }
            Err(_) => {
                tracing::warn!(%container, "outbox check timed out before a phase-1 write; writing");
                Ok(())
            }
        }
    }

    /// Phase 1's second half: the documents Cosmos stored, into PostgreSQL or the journal.
    pub(super) async fn copy_to_postgres(&self, written: Vec<WrittenDocument>) -> RepoResult<()> {
        if written.is_empty() {
            return Ok(());
        }
        let records: Vec<JournalRecord> = written.into_iter().map(journal_record).collect();
        let timeout = self.0.config.postgres_timeout;
        if self.0.config.phase1_copy == Phase1Copy::Inline {
            let applied = tokio::time::timeout(timeout, async {
                let mut held_back = Vec::new();
                for record in &records {
                    if copy_record(&self.0.pool, record).await? == Copied::HeldBack {
                        held_back.push(record);
                    }
                }
                Ok::<_, RepoError>(held_back)
            });
            let applied = self
                .timed(Store::Postgres, "phase1_copy", async {
                    applied.await.unwrap_or_else(|_| {
                        Err(RepoError::Unavailable("the copy timed out".to_owned()))
                    })
                })
                .await;
            match applied {
                Ok(held_back) if held_back.is_empty() => {
                    self.count(|c| &c.copied, records.len());
                    return Ok(());
                }
                Ok(held_back) => return Err(self.held_back(&held_back).await),
                Err(e) => {
                    tracing::warn!(
                        class = crate::journal::error_class(&e),
                        "copy to postgresql failed or timed out; journalling"
                    );
                }
            }
        }
        // The records may have landed in part: replaying them is harmless (version guard).
        let journalled =
            tokio::time::timeout(timeout, journal::append(&self.0.pool, &records, "router")).await;
        if matches!(journalled, Ok(Ok(()))) {
            self.count(|c| &c.journalled_postgres, records.len());
            self.failure("journalled_postgres", records.len());
            self.0.wake.notify_one();
            return Ok(());
        }
        let n = records.len();
        self.0.files.append_async(records).await.map_err(|e| {
            self.failure("unrecorded", n);
            RepoError::Unavailable(format!(
                "the write reached Cosmos, but neither PostgreSQL nor the local journal could \
                 record it ({e}); retry the call"
            ))
        })?;
        self.count(|c| &c.journalled_file, n);
        self.failure("journalled_file", n);
        Ok(())
    }

    /// A phase-1 copy the outbox rule held back: PostgreSQL holds a change of the aggregate
    /// that Cosmos had not taken when this write reached Cosmos (a phase-2 write committed by
    /// a router that had not yet seen the phase change). PostgreSQL's change is the reference;
    /// it is delivered now, over the document this write left in Cosmos, so the write is not
    /// acknowledged: the caller gets a retryable error, and its retry lands on top of the
    /// delivered change. A delivery that fails here is left to the relay (deferred).
    async fn held_back(&self, records: &[&JournalRecord]) -> RepoError {
        self.count(|c| &c.held_back, records.len());
        self.failure("held_back", records.len());
        for record in records {
            let JournalOp::Upsert { document } = &record.op else {
                continue;
            };
            if let Some(container) = Container::from_name(&record.container)
                && let Some(doc_ref) =
                    mystira_cosmos_codec::codec::document_ref(container, document)
            {
                relay::deliver_or_defer(
                    &self.0.pool,
                    &self.0.cosmos.writer,
                    container,
                    doc_ref.key,
                )
                .await;
            }
        }
        RepoError::Unavailable(
            "Cosmos took the write, but PostgreSQL holds a newer change of the same document \
             that Cosmos had not taken (a write made in phase 2); that change was delivered over \
             this write, which is not acknowledged: retry the call"
                .to_owned(),
        )
    }
}

pub(super) fn document_id(document: &serde_json::Value) -> String {
    document
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A captured Cosmos write as a journal record. A delete is dated by the `_ts` of the version
/// it deleted (else now): a copy of that version or an older one is then refused.
fn journal_record(written: WrittenDocument) -> JournalRecord {
    match written {
        WrittenDocument::Stored {
            container,
            document,
        } => JournalRecord {
            container: container.name().to_owned(),
            document_id: document_id(&document),
            op: JournalOp::Upsert { document },
        },
        WrittenDocument::Deleted {
            container,
            document_id,
            key,
            source_ts,
        } => JournalRecord {
            container: container.name().to_owned(),
            document_id,
            op: JournalOp::Delete {
                key,
                source_ts: source_ts.unwrap_or_else(|| {
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64)
                }),
            },
        },
    }
}
