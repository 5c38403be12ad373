//! Values PostgreSQL refuses are one document's problem, never the job's: a data exception
//! (SQLSTATE class 22) is a non-retryable document error, the bulk writer fails only the
//! document that holds one, the initial load's COPY refuses its page with an error its caller
//! defers (not retries), and the quarantine can always store the document, NUL characters
//! included, and give it back as it was.
#![allow(clippy::unwrap_used)]

use chrono::{Duration, SubsecRound, Utc};
use mystira_domain::{Account, AccountSettings, Email, RepoError, Role};
use mystira_postgres::bookkeeping::{self, QuarantinedDocument};
use mystira_postgres::bulk::{AccountDocument, SourceVersion, WriteOutcome, write_batch};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn account_doc(n: u128, display_name: &str) -> AccountDocument {
    let id = Uuid::from_u128(0x29_0000 + n);
    let t0 = (Utc::now() - Duration::days(3)).trunc_subsecs(6);
    AccountDocument {
        version: SourceVersion {
            document_id: id.to_string(),
            ts: 100,
            etag: Some("e".into()),
        },
        account: Account {
            id,
            cosmos_id: None,
            auth0_user_id: None,
            email: Email::parse("parent@example.com").unwrap(),
            display_name: display_name.to_owned(),
            role: Role::User,
            settings: AccountSettings::default(),
            created_at: t0,
            last_login_at: t0,
        },
        subscription: None,
        completed_scenarios: vec![],
        notes: vec![],
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_data_exception_is_a_document_error_that_is_not_retried(pool: PgPool) {
    // 22P02 invalid_text_representation, 22012 division_by_zero, 22021 a NUL in text
    for sql in [
        "select 'x'::int",
        "select 1 / 0",
        "select convert_from('\\x6100'::bytea, 'UTF8')",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap_err();
        let mapped = mystira_postgres::map_sqlx_error("accounts", err);
        assert!(matches!(mapped, RepoError::Invalid(_)), "{sql}: {mapped:?}");
        assert!(!mapped.is_retryable());
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_value_postgresql_refuses_fails_its_document_alone(pool: PgPool) {
    let docs = vec![
        account_doc(1, "one"),
        account_doc(2, "t\u{0}wo"),
        account_doc(3, "three"),
    ];
    let batch = write_batch(&pool, &docs).await.unwrap();
    assert!(matches!(batch.outcomes[0], WriteOutcome::Written));
    assert!(
        matches!(
            &batch.outcomes[1],
            WriteOutcome::Failed(RepoError::Invalid(_))
        ),
        "{:?}",
        batch.outcomes[1]
    );
    assert!(matches!(batch.outcomes[2], WriteOutcome::Written));
    let n: i64 = sqlx::query_scalar("select count(*) from accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_initial_loads_copy_refuses_such_a_page_with_an_error_that_defers_it(pool: PgPool) {
    assert_eq!(
        mystira_postgres::initial_load::begin(&pool).await.unwrap(),
        None
    );
    let docs = vec![account_doc(1, "one"), account_doc(2, "t\u{0}wo")];
    let mut tx = pool.begin().await.unwrap();
    let err = mystira_postgres::initial_load::copy_documents(&mut tx, &docs)
        .await
        .unwrap_err();
    // the caller (`initial::copy_page`) defers the page to the upsert pass on a non-retryable
    // error; a retryable one would be retried forever
    assert!(!err.is_retryable(), "{err:?}");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_quarantine_stores_a_document_holding_nul_and_gives_it_back(pool: PgPool) {
    let document = json!({
        "id": "a", "DisplayName": "x\u{0}y", "Settings": {"k\u{0}": ["\u{0}"]}, "n": 1,
    });
    for (document_id, message) in [
        ("a", "`DisplayName` holds a NUL character"),
        ("b\u{0}", "m\u{0}"),
    ] {
        bookkeeping::quarantine(
            &pool,
            &QuarantinedDocument {
                container: "Accounts",
                document_id,
                reason_code: "nul_character",
                message,
                document: &document,
                source_ts: Some(1),
            },
        )
        .await
        .unwrap();
    }
    // as an operator reads it in SQL: the JSON text, every NUL escaped
    let stored: serde_json::Value =
        sqlx::query_scalar("select document from migration.quarantine where document_id = 'a'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let text = stored[bookkeeping::DOCUMENT_JSON_TEXT].as_str().unwrap();
    assert!(text.contains("x\\u0000y") && !text.contains('\0'), "{text}");
    // as `quarantine show` and `quarantine retry` read it: the document as it was
    let (entry, back) = bookkeeping::quarantined_document(&pool, "Accounts", "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, document);
    assert_eq!(entry.reason_code, "nul_character");
    let open = bookkeeping::open_quarantined_documents(&pool, None, None, None, 10)
        .await
        .unwrap();
    assert_eq!(open.len(), 2);
    assert!(open.iter().all(|(_, _, d)| *d == document));
    // a NUL in the id or message (never expected) is written escaped
    let ids: Vec<(String, String)> = sqlx::query_as(
        "select document_id, message from migration.quarantine order by document_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(ids[1], ("b\\u0000".to_owned(), "m\\u0000".to_owned()));

    // a document that merely looks like the stored form is given back as it is
    let lookalike = json!({ bookkeeping::DOCUMENT_JSON_TEXT: "{\"id\":\"c\"}" });
    assert_eq!(
        bookkeeping::document_from_stored(lookalike.clone()),
        lookalike
    );
    let plain = json!({"id": "c"});
    assert_eq!(*bookkeeping::storable_document(&plain), plain);
}
