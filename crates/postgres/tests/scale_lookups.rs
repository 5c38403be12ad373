//! Per-page and per-batch statements cost in proportion to the page, not to a table (issue 33):
//! each is run against a large table, and PostgreSQL's own scan counts of it (the
//! transaction's, or the session's once flushed) must show that it was read by key, never
//! scanned whole, whatever the statistics.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, SubsecRound, Utc};
use mystira_domain::{
    Account, AccountSettings, AgeGroup, CompletedScenario, Email, Role, UserBadge, UserProfile,
    ids::derived_key,
};
use mystira_postgres::bookkeeping::{open_entries, resolve_quarantined};
use mystira_postgres::bulk::{
    AccountDocument, ProfileDocument, SourceVersion, WriteOutcome, write_batch,
};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

/// Index and sequential reads of `table`'s rows so far in the current transaction.
async fn rows_read(conn: &mut sqlx::PgConnection, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "select coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0) from pg_stat_xact_user_tables
         where schemaname = 'migration' and relname = $1",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

/// A page's documents resolve their quarantine entries by the primary key, one probe each,
/// however many entries are open and whatever the statistics: a million-account load leaves
/// about 36,000. A join with the page's ids was planned as a hash of all of them per page
/// (7.4 ms a page, 27 s of the load); with the ids as an init-plan array and `resolved_at is
/// null` in the condition, a quarantine never analyzed (as during a load) looked as if it held
/// almost no open entry, so the open-entries index was read whole for every page, each entry
/// compared with every id (25 ms a page, 92 s of the load).
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn resolving_a_pages_quarantine_entries_reads_them_by_key(pool: PgPool) {
    // 36,000 open entries with documents of a realistic size, never analyzed
    sqlx::raw_sql(
        "alter table migration.quarantine set (autovacuum_enabled = off);
         insert into migration.quarantine (container, document_id, reason_code, message, document, source_ts)
         select 'UserProfiles', 'doc-' || i, 'invalid_value', 'bad', jsonb_build_object('x', repeat('y', 600)), i
         from generate_series(1, 36000) i;
         update migration.quarantine set resolved_at = now() where document_id = 'doc-35950'",
    )
    .execute(&pool)
    .await
    .unwrap();
    for analyzed in [false, true] {
        if analyzed {
            sqlx::query("analyze migration.quarantine")
                .execute(&pool)
                .await
                .unwrap();
        }
        // a page of 1,000 documents: without statistics 100 of them had been quarantined (one
        // entry resolved already, and kept as it was), after ANALYZE all 1,000
        let first = if analyzed { 34_901 } else { 35_901 };
        let page: Vec<String> = (first..first + 1_000).map(|i| format!("doc-{i}")).collect();
        let mut tx = pool.begin().await.unwrap();
        let (seq_before, idx_before) = rows_read(&mut tx, "quarantine").await;
        resolve_quarantined(&mut *tx, "UserProfiles", &page)
            .await
            .unwrap();
        let (seq_after, idx_after) = rows_read(&mut tx, "quarantine").await;
        tx.commit().await.unwrap();
        assert_eq!(
            seq_after - seq_before,
            0,
            "the quarantine was scanned whole for one page (analyzed: {analyzed})"
        );
        assert!(
            idx_after - idx_before <= 1_000,
            "{} entries read for a page of 1,000 documents (analyzed: {analyzed})",
            idx_after - idx_before
        );
    }
    let (open, kept): (i64, bool) = sqlx::query_as(
        "select count(*) filter (where resolved_at is null),
                bool_and(resolved_at < now()) filter (where document_id = 'doc-35950')
         from migration.quarantine",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(open, 36_000 - 1 - 99 - 1_000);
    assert!(kept, "an entry resolved earlier keeps its time");
}

/// The same page's entries, with statistics made while the quarantine held only another
/// container's entries (as after a load that quarantined accounts, then profiles): then the
/// planner left `document_id = any(array(...))`, the key's second column, out of the index
/// condition and filtered every entry of the container with it (965 ms a page at 36,000).
/// Resolving and verify's read of the open entries both go by key.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_pages_quarantine_entries_are_read_by_key_under_another_containers_statistics(
    pool: PgPool,
) {
    sqlx::raw_sql(
        "alter table migration.quarantine set (autovacuum_enabled = off);
         insert into migration.quarantine (container, document_id, reason_code, message, document, source_ts)
         select 'Accounts', 'acc-' || i, 'invalid_value', 'bad', '{}'::jsonb, i
         from generate_series(1, 2000) i;
         analyze migration.quarantine;
         insert into migration.quarantine (container, document_id, reason_code, message, document, source_ts)
         select 'UserProfiles', 'doc-' || i, 'invalid_value', 'bad', jsonb_build_object('x', repeat('y', 600)), i
         from generate_series(1, 36000) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let page: Vec<String> = (35_001..36_001).map(|i| format!("doc-{i}")).collect();
    let mut tx = pool.begin().await.unwrap();
    let (seq_before, idx_before) = rows_read(&mut tx, "quarantine").await;
    let open = open_entries(&mut *tx, "UserProfiles", &page).await.unwrap();
    assert_eq!(open.len(), 1_000);
    resolve_quarantined(&mut *tx, "UserProfiles", &page)
        .await
        .unwrap();
    let (seq_after, idx_after) = rows_read(&mut tx, "quarantine").await;
    tx.commit().await.unwrap();
    assert_eq!(
        seq_after - seq_before,
        0,
        "the quarantine was scanned whole"
    );
    assert!(
        idx_after - idx_before <= 2_000,
        "{} entries read for two reads of a page of 1,000 documents",
        idx_after - idx_before
    );
    let still_open: i64 = sqlx::query_scalar(
        "select count(*) from migration.quarantine where container = 'UserProfiles' and resolved_at is null",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(still_open, 35_000);
}

/// Sequential scans of `table` counted so far, this session's included: the session's pending
/// counts are flushed first (`pg_stat_force_next_flush` flushes them when the statement ends).
async fn flushed_seq_scans(conn: &mut sqlx::PgConnection, table: &str) -> i64 {
    sqlx::query("select pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_scalar(
        "select coalesce(seq_scan, 0) from pg_stat_user_tables
         where schemaname = 'public' and relname = $1",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

fn t0() -> DateTime<Utc> {
    (Utc::now() - chrono::Duration::days(30)).trunc_subsecs(6)
}

fn version(id: Uuid) -> SourceVersion {
    SourceVersion {
        document_id: id.to_string(),
        ts: 100,
        etag: Some("e".into()),
    }
}

fn profile_doc(id: Uuid) -> ProfileDocument {
    let badge = |n: u32| UserBadge {
        id: Uuid::new_v4(),
        cosmos_id: None,
        user_profile_id: id,
        badge_configuration_id: format!("cfg-{n}"),
        badge_id: None,
        badge_name: "Brave".into(),
        badge_message: String::new(),
        axis: "courage".into(),
        trigger_value: 1.5,
        threshold: 1.0,
        earned_at: t0(),
        game_session_id: None,
        scenario_id: None,
        image_id: String::new(),
    };
    ProfileDocument {
        version: version(id),
        profile: UserProfile {
            id,
            cosmos_id: None,
            account_id: None,
            name: "Kid".into(),
            age_group: AgeGroup::parse("6-9").unwrap(),
            date_of_birth: None,
            is_guest: false,
            is_npc: false,
            pronouns: None,
            bio: None,
            avatar_media_id: None,
            selected_avatar_media_id: None,
            preferred_themes: vec!["Classic Fantasy".into()],
            has_completed_onboarding: true,
            created_at: t0(),
            updated_at: t0(),
        },
        account_ref: None,
        badges: (0..5).map(badge).collect(),
        notes: vec![],
    }
}

fn account_doc(id: Uuid) -> AccountDocument {
    AccountDocument {
        version: version(id),
        account: Account {
            id,
            cosmos_id: None,
            auth0_user_id: None,
            email: Email::parse("parent@example.com").unwrap(),
            display_name: "Parent".into(),
            role: Role::User,
            settings: AccountSettings::default(),
            created_at: t0(),
            last_login_at: t0(),
        },
        subscription: None,
        completed_scenarios: (0..3)
            .map(|n| CompletedScenario {
                id: derived_key("completed_scenario", id, &format!("scn-{n}")),
                account_id: id,
                scenario_id: format!("scn-{n}"),
                completed_at: t0(),
            })
            .collect(),
        notes: vec![],
    }
}

/// A pool of one connection (so that this test's statistics flush is the writer's session's)
/// on the test database, whose domain tables autovacuum leaves alone: they stay without
/// statistics, as a table an upsert run is filling may be. The session plans every prepared
/// statement once, generically, for the tables as they are at its first run (empty here), as
/// PostgreSQL does after a statement's fifth run: the writer must plan its own statements.
async fn one_connection(connect: PgConnectOptions) -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(connect.options([("plan_cache_mode", "force_generic_plan")]))
        .await
        .unwrap();
    for table in [
        "accounts",
        "completed_scenarios",
        "user_profiles",
        "user_badges",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter table {table} set (autovacuum_enabled = off)"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    pool
}

/// A batch of profiles finds and replaces their badges by key, on a badge table of 100,000 rows
/// that was never analyzed: `user_profile_id = any($1)` was estimated at every row there and
/// planned as a sequential scan of the whole table per batch (640 ms a batch at 2.5 million
/// badges), as was the owner branch of the embedded-id lookup; and a plan made while the table
/// was empty must not be the one used once it is large.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_batch_of_profiles_reads_badges_by_key_on_a_table_never_analyzed(
    _pool_opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = one_connection(connect).await;
    // the first batch meets empty tables: the session's generic plans are made now
    let first: Vec<ProfileDocument> = (0..50).map(|_| profile_doc(Uuid::new_v4())).collect();
    write_batch(&pool, &first).await.unwrap();
    // then 20,000 profiles with 5 badges each, as a copy writes them (no outbox rows)
    sqlx::raw_sql(
        "set mystira.keep_source_timestamps = 'on';
         insert into user_profiles (id, name) select gen_random_uuid(), 'Kid'
         from generate_series(1, 20000);
         insert into user_badges (id, user_profile_id, badge_configuration_id, badge_name, axis)
         select gen_random_uuid(), p.id, 'cfg-' || n, 'Brave', 'courage'
         from user_profiles p cross join generate_series(0, 4) n
         where not exists (select 1 from user_badges b where b.user_profile_id = p.id);
         reset mystira.keep_source_timestamps;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let before = flushed_seq_scans(&mut conn, "user_badges").await;
    drop(conn);
    // 50 new profiles and the first 50 again with other badges: 500 badges against 100,000,
    // as small a part as a batch of 1,000 profiles is of a million accounts' 12 million
    let mut batch: Vec<ProfileDocument> = (0..50).map(|_| profile_doc(Uuid::new_v4())).collect();
    batch.extend(first.iter().map(|d| {
        let mut again = profile_doc(d.profile.id);
        again.version.ts = 200;
        again
    }));
    let written = write_batch(&pool, &batch).await.unwrap();
    assert!(
        written
            .outcomes
            .iter()
            .all(|o| matches!(o, WriteOutcome::Written))
    );
    let mut conn = pool.acquire().await.unwrap();
    let after = flushed_seq_scans(&mut conn, "user_badges").await;
    assert_eq!(
        after - before,
        0,
        "a batch of profiles scanned the badge table whole"
    );
    let badges: i64 = sqlx::query_scalar("select count(*) from user_badges")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(badges, (20_000 + 100) * 5);
}

/// A batch of accounts replaces their completed scenarios by key on a table never analyzed, with
/// plans not made while it was empty.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_batch_of_accounts_reads_completed_scenarios_by_key_on_a_table_never_analyzed(
    _pool_opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = one_connection(connect).await;
    let first: Vec<AccountDocument> = (0..50).map(|_| account_doc(Uuid::new_v4())).collect();
    write_batch(&pool, &first).await.unwrap();
    sqlx::raw_sql(
        "set mystira.keep_source_timestamps = 'on';
         insert into accounts (id, email) select gen_random_uuid(), 'parent@example.com'
         from generate_series(1, 30000);
         insert into completed_scenarios (id, account_id, scenario_id)
         select gen_random_uuid(), a.id, 'scn-' || n
         from accounts a cross join generate_series(0, 2) n
         where not exists (select 1 from completed_scenarios c where c.account_id = a.id);
         reset mystira.keep_source_timestamps;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let before = flushed_seq_scans(&mut conn, "completed_scenarios").await;
    drop(conn);
    let mut batch: Vec<AccountDocument> = (0..50).map(|_| account_doc(Uuid::new_v4())).collect();
    batch.extend(first.iter().map(|d| {
        let mut again = account_doc(d.account.id);
        again.version.ts = 200;
        // one scenario fewer: the delete has a row to take out per account
        again.completed_scenarios.pop();
        again
    }));
    let written = write_batch(&pool, &batch).await.unwrap();
    assert!(
        written
            .outcomes
            .iter()
            .all(|o| matches!(o, WriteOutcome::Written))
    );
    let mut conn = pool.acquire().await.unwrap();
    let after = flushed_seq_scans(&mut conn, "completed_scenarios").await;
    assert_eq!(
        after - before,
        0,
        "a batch of accounts scanned the completed scenarios whole"
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from completed_scenarios")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(rows, (30_000 + 100) * 3 - 50);
}

/// Reads of a `migration` table counted so far, this session's included (flushed first):
/// sequential scans, rows they read, and rows fetched through an index.
async fn flushed_reads(conn: &mut sqlx::PgConnection, table: &str) -> (i64, i64, i64) {
    sqlx::query("select pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_as(
        "select coalesce(seq_scan, 0), coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0)
         from pg_stat_user_tables where schemaname = 'migration' and relname = $1",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

/// The bookkeeping tables a batch looks its documents up in.
const BOOKKEEPING: [&str; 3] = ["document_versions", "document_notes", "outbox"];

/// Turns autovacuum off on the bookkeeping tables, and gives the notes statistics made when
/// they held only 20,000 notes of the container other than `container`, as an upsert run's
/// autovacuum leaves them after the accounts and before the profiles: the planner then takes
/// `container = $1` to match almost no note. Before any document of `container` is written.
async fn notes_analyzed_early(pool: &PgPool, container: &str) {
    for table in BOOKKEEPING {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter table migration.{table} set (autovacuum_enabled = off)"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "insert into migration.document_notes (container, document_id, code, subject, detail)
         select case when $1 = 'Accounts' then 'UserProfiles' else 'Accounts' end,
                gen_random_uuid()::text, 'default_applied', 'Field', '{}'
         from generate_series(1, 20000)",
    )
    .bind(container)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("analyze migration.document_notes")
        .execute(pool)
        .await
        .unwrap();
}

/// Fills the bookkeeping tables as a large run leaves them, for `container`: 100,000 versions of
/// other documents, 2 notes each, and 20,000 pending outbox rows of other aggregates (a phase-1
/// or phase-2 outbox that churns). The versions and the outbox stay without statistics, as
/// during an upsert run that fills them; the notes keep those of [`notes_analyzed_early`].
async fn large_bookkeeping(pool: &PgPool, container: &str) {
    sqlx::query(
        "insert into migration.document_versions (container, document_id, key, source_ts, source_etag)
         select $1, k::text, k, 100, 'e' from (select gen_random_uuid() k from generate_series(1, 100000)) g",
    )
    .bind(container)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into migration.document_notes (container, document_id, code, subject, detail)
         select v.container, v.document_id, c, 'Field', '{}'
         from migration.document_versions v cross join (values ('default_applied'), ('value_trimmed')) as c(c)
         where v.container = $1
         on conflict do nothing",
    )
    .bind(container)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into migration.outbox (container, key)
         select $1, gen_random_uuid() from generate_series(1, 20000)",
    )
    .bind(container)
    .execute(pool)
    .await
    .unwrap();
}

/// The reads of the bookkeeping tables, in [`BOOKKEEPING`]'s order.
async fn bookkeeping_reads(pool: &PgPool) -> Vec<(i64, i64, i64)> {
    let mut conn = pool.acquire().await.unwrap();
    let mut reads = Vec::new();
    for table in BOOKKEEPING {
        reads.push(flushed_reads(&mut conn, table).await);
    }
    reads
}

/// No bookkeeping table was scanned whole between `before` and `after`, and each gave at most
/// `per_document` rows a document of the `documents` written (every table's reads reported).
fn assert_read_by_key(
    before: &[(i64, i64, i64)],
    after: &[(i64, i64, i64)],
    documents: i64,
    per_document: i64,
) {
    let mut wrong = Vec::new();
    for ((table, b), a) in BOOKKEEPING.iter().zip(before).zip(after) {
        let (scans, read) = (a.0 - b.0, (a.1 - b.1) + (a.2 - b.2));
        if scans > 0 || read > documents * per_document {
            wrong.push(format!(
                "migration.{table}: {scans} sequential scans, {read} rows read"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "a batch of {documents} documents read tables whole: {}",
        wrong.join("; ")
    );
}

fn with_notes(mut doc: ProfileDocument) -> ProfileDocument {
    doc.notes = ["default_applied", "value_trimmed"]
        .into_iter()
        .map(|code| mystira_postgres::bulk::DocumentNote {
            code: code.into(),
            subject: "Field".into(),
            detail: serde_json::json!({}),
            original: None,
        })
        .collect();
    doc
}

/// A batch of profile documents finds its rivals (other documents of the same keys), claims its
/// versions past the outbox check, looks up which stale copies the outbox held back, and
/// replaces its notes, each by key: on bookkeeping tables of 100,000 versions, 200,000 notes and
/// 20,000 pending outbox rows, never analyzed or analyzed before they held the container's rows
/// (see [`notes_analyzed_early`]), no table is scanned and no lookup reads more than a few rows a
/// document. Joined with the batch's `unnest` and planned for its size
/// (`force_custom_plan`), these lookups were hash joins over the whole table: the rivals lookup
/// 38 ms instead of 6.5 ms a batch, the notes delete 27 ms instead of 5 ms at 100,000 accounts
/// (issue 33).
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_batch_reads_versions_notes_and_the_outbox_by_key_whatever_their_statistics(
    _pool_opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = one_connection(connect).await;
    notes_analyzed_early(&pool, "UserProfiles").await;
    let first: Vec<ProfileDocument> = (0..100)
        .map(|_| with_notes(profile_doc(Uuid::new_v4())))
        .collect();
    write_batch(&pool, &first).await.unwrap();
    large_bookkeeping(&pool, "UserProfiles").await;
    let before = bookkeeping_reads(&pool).await;
    // 50 new documents, 50 newer copies of earlier ones (without notes now: theirs go), and 50
    // copies at the version stored (not fresh: the outbox's hold is looked up for them)
    let mut batch: Vec<ProfileDocument> = (0..50)
        .map(|_| with_notes(profile_doc(Uuid::new_v4())))
        .collect();
    batch.extend(first[..50].iter().map(|d| {
        let mut again = profile_doc(d.profile.id);
        again.version.ts = 200;
        again
    }));
    batch.extend(
        first[50..]
            .iter()
            .map(|d| with_notes(profile_doc(d.profile.id))),
    );
    let written = write_batch(&pool, &batch).await.unwrap();
    let after = bookkeeping_reads(&pool).await;
    let (fresh, unchanged) = written.outcomes.split_at(100);
    assert!(fresh.iter().all(|o| matches!(o, WriteOutcome::Written)));
    assert!(
        unchanged
            .iter()
            .all(|o| matches!(o, WriteOutcome::Unchanged))
    );
    assert_read_by_key(&before, &after, 150, 10);
    let notes: i64 = sqlx::query_scalar(
        "select count(*) from migration.document_notes where container = 'UserProfiles'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(notes, (100_000 + 100) * 2);
}

/// A batch of account documents re-run at their stored versions decides who keeps each login
/// (`identity::plan`: their stored versions and pending outbox rows) by key, on the bookkeeping
/// tables of [`large_bookkeeping`].
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_rerun_of_accounts_looks_up_stored_versions_by_key_whatever_their_statistics(
    _pool_opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = one_connection(connect).await;
    notes_analyzed_early(&pool, "Accounts").await;
    let with_login = |id: Uuid| {
        let mut doc = account_doc(id);
        doc.account.auth0_user_id = Some(format!("auth0|{}", id.simple()));
        doc
    };
    let first: Vec<AccountDocument> = (0..100).map(|_| with_login(Uuid::new_v4())).collect();
    write_batch(&pool, &first).await.unwrap();
    large_bookkeeping(&pool, "Accounts").await;
    let before = bookkeeping_reads(&pool).await;
    // the same documents again, at the versions stored: each claims its login again
    let again: Vec<AccountDocument> = first.iter().map(|d| with_login(d.account.id)).collect();
    let written = write_batch(&pool, &again).await.unwrap();
    let after = bookkeeping_reads(&pool).await;
    assert!(
        written
            .outcomes
            .iter()
            .all(|o| matches!(o, WriteOutcome::Unchanged))
    );
    assert_read_by_key(&before, &after, 100, 10);
    let logins: i64 =
        sqlx::query_scalar("select count(*) from accounts where auth0_user_id like 'auth0|%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(logins, 100);
}
