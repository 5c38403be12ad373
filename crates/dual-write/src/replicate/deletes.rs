//! Deletes: the key-set comparison (ids PostgreSQL holds against the ids Cosmos holds) and the
//! deletes an all-versions-and-deletes feed reports, applied as tombstones only when
//! configured to.

use std::collections::HashSet;

use mystira_cosmos_store::QuerySpec;
use mystira_postgres::bulk::{self, DeleteOutcome};
use serde_json::Value;

use super::{DeleteCheck, ReplicateError, Replicator, now_secs};

impl Replicator<'_> {
    /// The key-set comparison: ids PostgreSQL holds as not deleted (listed first, older than
    /// the grace period, with no outbox row still to deliver them to Cosmos) that Cosmos does
    /// not hold are deletes.
    pub(super) async fn check_deletes(&self) -> Result<(), ReplicateError> {
        let grace_ms = i64::try_from(self.config.delete_grace.as_millis()).unwrap_or(i64::MAX);
        for (name, handle) in &self.containers {
            let postgres: Vec<(String, uuid::Uuid)> = sqlx::query_as(
                "select v.document_id, v.key from migration.document_versions v
                 where v.container = $1 and not v.deleted
                   and v.written_at < now() - $2 * interval '1 millisecond'
                   and not exists (select 1 from migration.outbox o
                                   where o.container = v.container and o.key = v.key)",
            )
            .bind(*name)
            .bind(grace_ms)
            .fetch_all(self.pool)
            .await
            .map_err(|e| mystira_postgres::map_sqlx_error("document_versions", e))?;
            let mut cosmos: HashSet<String> = HashSet::new();
            let mut pages = handle.query_with_page_size::<Value>(
                QuerySpec::new("select c.id from c"),
                None,
                self.config.page_size.max(1000),
            );
            while let Some(page) = pages.next_page().await? {
                cosmos.extend(
                    page.items
                        .iter()
                        .filter_map(|d| d.get("id").and_then(Value::as_str).map(str::to_owned)),
                );
            }
            let mut check = DeleteCheck {
                postgres_ids: postgres.len() as u64,
                cosmos_ids: cosmos.len() as u64,
                ..DeleteCheck::default()
            };
            let now = now_secs();
            for (id, key) in postgres.iter().filter(|(id, _)| !cosmos.contains(id)) {
                check.missing_from_cosmos += 1;
                if self.config.apply_deletes {
                    match bulk::delete_document(self.pool, name, id, *key, now).await? {
                        DeleteOutcome::Deleted { .. } => check.applied += 1,
                        DeleteOutcome::Superseded => check.superseded += 1,
                    }
                }
            }
            if check.missing_from_cosmos > 0 {
                tracing::info!(
                    container = *name,
                    missing = check.missing_from_cosmos,
                    applied = check.applied,
                    "documents missing from cosmos"
                );
            }
            self.state().deletes.insert((*name).to_owned(), check);
        }
        Ok(())
    }

    /// A delete the feed reported: applied when PostgreSQL knows the document.
    pub(super) async fn apply_delete(
        &self,
        container: &str,
        id: &str,
        ts: i64,
    ) -> Result<(), ReplicateError> {
        let key: Option<uuid::Uuid> = sqlx::query_scalar(
            "select key from migration.document_versions where container = $1 and document_id = $2",
        )
        .bind(container)
        .bind(id)
        .fetch_optional(self.pool)
        .await
        .map_err(|e| mystira_postgres::map_sqlx_error("document_versions", e))?;
        if let Some(key) = key {
            bulk::delete_document(self.pool, container, id, key, ts).await?;
        }
        Ok(())
    }
}
