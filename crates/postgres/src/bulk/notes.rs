//! A document's notes (`migration.document_notes`: what the mapping noted about a document,
//! e.g. a profile waiting for its account): written with the document's rows, replaced when it
//! is written again, dropped when its rows go.

use sqlx::PgConnection;

use super::{BulkDocument, DocumentNote, NotesFor, Result};
use crate::error::map_sqlx_error;

/// Drops the notes of a document whose rows are gone.
pub(super) async fn delete_notes(
    conn: &mut PgConnection,
    container: &str,
    document_id: &str,
) -> Result<()> {
    sqlx::query("delete from migration.document_notes where container = $1 and document_id = $2")
        .bind(container)
        .bind(document_id)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_sqlx_error("document_notes", e))?;
    Ok(())
}

/// Replaces the notes of `docs` with the ones they carry now (and `extra`).
pub(crate) async fn replace_notes<D: BulkDocument>(
    conn: &mut PgConnection,
    docs: &[&D],
    extra: &[NotesFor],
) -> Result<()> {
    let map = |e| map_sqlx_error("document_notes", e);
    let ids: Vec<String> = docs
        .iter()
        .map(|d| d.version().document_id.clone())
        .collect();
    // By key whatever the statistics and the batch's size: each document's notes are found by
    // one descent of the primary key, which leads with (container, document_id), in a lateral
    // subquery the planner may not flatten (`offset 0`), and deleted by their row addresses (an
    // array the planner cannot count: a TID scan). Joined with `unnest($2)` and planned for a
    // batch's 1,000 ids, the delete hashed every note of the container per batch (27 ms a
    // batch at 100,000 accounts, issue 33). `document_id = any(array(...))` is no better: on
    // the key's second column the planner may leave it out of the index condition and filter
    // every note of the container with it, as it did when the notes had last been analyzed
    // while they held only accounts' (92 ms a batch; 1.6 s for 120,000 notes).
    sqlx::query(
        "delete from migration.document_notes
         where ctid = any(array(
             select n.ctid from unnest($2::text[]) as d(id)
             cross join lateral (select ctid from migration.document_notes
                                 where container = $1 and document_id = d.id offset 0) as n))",
    )
    .bind(D::CONTAINER)
    .bind(&ids)
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    insert_notes(conn, docs, extra).await
}

/// Writes the notes of `docs` (and `extra`) without removing the documents' earlier notes:
/// for documents known to have none.
pub(crate) async fn insert_notes<D: BulkDocument>(
    conn: &mut PgConnection,
    docs: &[&D],
    extra: &[NotesFor],
) -> Result<()> {
    let map = |e| map_sqlx_error("document_notes", e);
    let notes: Vec<(&str, &DocumentNote)> = docs
        .iter()
        .flat_map(|d| {
            d.notes()
                .iter()
                .map(|n| (d.version().document_id.as_str(), n))
        })
        .chain(extra.iter().map(|n| (n.document_id.as_str(), &n.note)))
        .collect();
    if notes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into migration.document_notes (container, document_id, code, subject, detail, original)
         select $1, d, c, s, x, o
         from unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[]) as n(d, c, s, x, o)
         on conflict (container, document_id, code, subject) do update
             set detail = excluded.detail, original = excluded.original",
    )
    .bind(D::CONTAINER)
    .bind(notes.iter().map(|(d, _)| (*d).to_owned()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.code.clone()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.subject.clone()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.detail.clone()).collect::<Vec<_>>())
    .bind(notes.iter().map(|(_, n)| n.original.clone()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    Ok(())
}
