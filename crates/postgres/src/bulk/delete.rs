//! Deletes that Cosmos has taken: a tombstone version in `migration.document_versions` that only
//! a strictly newer write can pass, and the removal of the document's main row (its dependants
//! cascade, its embedded ids pass on, an account's profiles are detached).

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Result, accounts, begin_copy, delete_notes, embedded};
use crate::error::map_sqlx_error;
use mystira_domain::RepoError;

/// The table holding the main row of a container's documents (the others cascade from it).
fn main_table(container: &str) -> Result<&'static str> {
    match container {
        "Accounts" => Ok("accounts"),
        "UserProfiles" => Ok("user_profiles"),
        "PendingSignups" => Ok("pending_signups"),
        _ => Err(RepoError::Store(format!(
            "container `{container}` is not part of the user domain"
        ))),
    }
}

/// Deletes the main row of `key` (its dependants cascade) and says whether there was one. The
/// embedded ids its rows held pass to the next documents claiming them, and an account's
/// profiles are detached with a `missing_account` note, as a profile landing before its
/// account would be, so that they attach again when the account lands again.
pub(super) async fn remove_main_row(
    conn: &mut PgConnection,
    container: &str,
    key: Uuid,
) -> Result<bool> {
    let table = main_table(container)?;
    let embedded_table = match container {
        "Accounts" => Some(embedded::EmbeddedTable::Subscriptions),
        "UserProfiles" => Some(embedded::EmbeddedTable::Badges),
        _ => None,
    };
    let released = match embedded_table {
        Some(t) => embedded::keys_held_by(conn, t, &[key]).await?,
        None => Vec::new(),
    };
    if container == "Accounts" {
        accounts::note_profiles_to_detach(conn, key).await?;
    }
    // `table` is one of three constants, never input
    let removed = sqlx::query(sqlx::AssertSqlSafe(format!(
        "delete from {table} where id = $1"
    )))
    .bind(key)
    .execute(&mut *conn)
    .await
    .map_err(|e| map_sqlx_error(table, e))?
    .rows_affected()
        > 0;
    if let Some(t) = embedded_table
        && !released.is_empty()
    {
        embedded::resolve(conn, t, &[], &released, &[]).await?;
    }
    Ok(removed)
}

/// What applying a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The tombstone is recorded; `removed` says whether a row was there to delete.
    Deleted { removed: bool },
    /// A newer version of the document is already recorded (it was written again after this
    /// delete): nothing changed.
    Superseded,
}

/// Applies a delete that Cosmos has taken: records a tombstone version for the document
/// (`source_ts` = the `_ts` of the version that was deleted, or when the delete was seen) and
/// deletes its main row, whose
/// dependants cascade (an account's profiles are detached). A tombstone is a version like any
/// other: a late copy of the document from before the delete is refused by the same guard as a
/// stale write, and a delete older than the recorded version changes nothing.
///
/// Runs as a copy from Cosmos (`mystira.keep_source_timestamps`), so no outbox row is written:
/// the delete came from Cosmos and must not echo back to it.
pub async fn delete_document(
    pool: &PgPool,
    container: &str,
    document_id: &str,
    key: Uuid,
    source_ts: i64,
) -> Result<DeleteOutcome> {
    let table = main_table(container)?;
    let map = |e| map_sqlx_error(table, e);
    let mut tx = begin_copy(pool, table).await?;
    crate::initial_load::guard_writers(&mut tx).await?;
    let claimed: Option<i32> = sqlx::query_scalar(
        "insert into migration.document_versions as v
             (container, document_id, key, source_ts, source_etag, deleted)
         values ($1, $2, $3, $4, null, true)
         on conflict (container, document_id) do update set
             key = excluded.key, source_ts = excluded.source_ts, source_etag = null,
             deleted = true, written_at = now()
         where v.source_ts <= excluded.source_ts
         returning 1",
    )
    .bind(container)
    .bind(document_id)
    .bind(key)
    .bind(source_ts)
    .fetch_optional(&mut *tx)
    .await
    .map_err(map)?;
    if claimed.is_none() {
        return Ok(DeleteOutcome::Superseded);
    }
    let removed = remove_main_row(&mut tx, container, key).await?;
    delete_notes(&mut tx, container, document_id).await?;
    tx.commit().await.map_err(map)?;
    Ok(DeleteOutcome::Deleted { removed })
}
