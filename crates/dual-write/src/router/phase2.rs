//! Phase 2's second halves (PostgreSQL first): the inline delivery of a committed aggregate to
//! Cosmos, bounded by a deadline and a number in flight, and the back-fill of what a missed
//! PostgreSQL read found in Cosmos.

use mystira_cosmos_codec::codec::Container;
use mystira_domain::RepoError;
use mystira_postgres::journal::{JournalOp, JournalRecord};
use uuid::Uuid;

#[cfg(doc)]
use super::RouterConfig;
use super::phase1::document_id;
use super::{DualWriteRouter, Store};
use crate::journal::apply_record;
use crate::relay::{self, Delivered};

impl DualWriteRouter {
    /// Phase 2's second half: the aggregate into Cosmos now, or later by the relay. The call
    /// waits for the delivery at most [`RouterConfig::phase2_delivery_deadline`]: the delivery
    /// runs as a task of its own, so past the deadline it is not cancelled midway (it finishes
    /// or defers its rows for the relay) while the caller gets its answer.
    pub(super) async fn deliver_inline(&self, container: Container, key: Uuid) {
        let started = std::time::Instant::now();
        let Ok(permit) = self.0.inline_deliveries.clone().try_acquire_owned() else {
            tracing::warn!(%container, "too many inline deliveries in flight; left to the relay");
            self.count(|c| &c.left_to_relay, 1);
            self.failure("left_to_relay", 1);
            self.0.wake.notify_one();
            return;
        };
        let router = self.clone();
        let delivery = tokio::spawn(async move {
            let _permit = permit;
            relay::deliver_or_defer(&router.0.pool, &router.0.cosmos.writer, container, key).await
        });
        let delivered =
            match tokio::time::timeout(self.0.config.phase2_delivery_deadline, delivery).await {
                Ok(Ok(delivered)) => delivered,
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // cancelled: the runtime is shutting down; the rows stay for the relay
                Ok(Err(_)) => None,
                Err(_) => {
                    tracing::warn!(
                        %container,
                        class = "deadline",
                        "inline delivery to cosmos passed its deadline; answering, the delivery \
                         goes on in the background"
                    );
                    None
                }
            };
        if let Some(observer) = &self.0.config.observer {
            observer.store_write(
                Store::Cosmos,
                "phase2_delivery",
                started.elapsed(),
                delivered.is_some(),
            );
        }
        match delivered {
            Some(Delivered::Put | Delivered::Removed | Delivered::AlreadyDelivered) => {
                self.count(|c| &c.delivered_inline, 1);
            }
            None => {
                self.count(|c| &c.left_to_relay, 1);
                self.failure("left_to_relay", 1);
            }
        }
    }

    /// Copies the Cosmos document of `(container, key)` into PostgreSQL through the version
    /// guard (the phase-2 fallback's back-fill). A failure only costs the next read another
    /// fallback; it is logged without values.
    pub(super) async fn backfill_from_cosmos(&self, container: Container, key: Uuid) {
        let copied = async {
            if let Some(document) = self.0.cosmos.writer.read(container, key).await? {
                let record = JournalRecord {
                    container: container.name().to_owned(),
                    document_id: document_id(&document),
                    op: JournalOp::Upsert { document },
                };
                apply_record(&self.0.pool, &record).await?;
            }
            Ok::<(), RepoError>(())
        };
        if let Err(e) = copied.await {
            tracing::warn!(%container, class = crate::journal::error_class(&e), "fallback back-fill failed");
        }
    }
}
