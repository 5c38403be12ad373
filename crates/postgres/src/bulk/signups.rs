//! Writing `PendingSignups` documents.

use async_trait::async_trait;
use mystira_domain::PendingSignup;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{BulkDocument, DocumentNote, NotesFor, Result, SignupDocument, SourceVersion, column};
use crate::error::map_sqlx_error;

#[async_trait]
impl BulkDocument for SignupDocument {
    const CONTAINER: &'static str = "PendingSignups";
    document_accessors!(signup);
    const SNAPSHOT_SQL: &'static str =
        "select jsonb_build_object('signup', to_jsonb(s)) from pending_signups s where s.id = $1";

    fn validate(&self) -> Result<()> {
        Ok(self.signup.validate()?)
    }

    async fn write_rows(conn: &mut PgConnection, docs: &[&Self]) -> Result<Vec<NotesFor>> {
        let signups: Vec<&PendingSignup> = docs.iter().map(|d| &d.signup).collect();
        sqlx::query(
            "insert into pending_signups
                 (id, cosmos_id, email, display_name, code, verification_token_hash, status,
                  verified_at, consumed_at, created_at, expires_at, is_used, is_signin,
                  failed_attempts)
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::int2[], $8::timestamptz[], $9::timestamptz[],
                                  $10::timestamptz[], $11::timestamptz[], $12::bool[],
                                  $13::bool[], $14::int4[])
             on conflict (id) do update set
                 cosmos_id = excluded.cosmos_id, email = excluded.email,
                 display_name = excluded.display_name, code = excluded.code,
                 verification_token_hash = excluded.verification_token_hash,
                 status = excluded.status, verified_at = excluded.verified_at,
                 consumed_at = excluded.consumed_at,
                 created_at = excluded.created_at, expires_at = excluded.expires_at,
                 is_used = excluded.is_used, is_signin = excluded.is_signin,
                 failed_attempts = excluded.failed_attempts",
        )
        .bind(column(&signups, |s| s.id))
        .bind(column(&signups, |s| s.cosmos_id.clone()))
        .bind(column(&signups, |s| s.email.as_str().to_owned()))
        .bind(column(&signups, |s| s.display_name.clone()))
        .bind(column(&signups, |s| {
            s.code.as_ref().map(|c| c.as_str().to_owned())
        }))
        // both versions' columns: a document with fields of both keeps both
        .bind(column(&signups, |s| s.token_hash().map(str::to_owned)))
        .bind(column(&signups, |s| {
            s.magic_link.as_ref().map(|m| m.status.get())
        }))
        .bind(column(&signups, |s| {
            s.magic_link.as_ref().and_then(|m| m.verified_at)
        }))
        .bind(column(&signups, |s| {
            s.magic_link.as_ref().and_then(|m| m.consumed_at)
        }))
        .bind(column(&signups, |s| s.created_at))
        .bind(column(&signups, |s| s.expires_at))
        .bind(column(&signups, |s| s.is_used))
        .bind(column(&signups, |s| s.is_signin))
        .bind(column(&signups, |s| s.failed_attempts))
        .execute(&mut *conn)
        .await
        .map_err(|e| map_sqlx_error("pending_signups", e))?;
        Ok(Vec::new())
    }
}
