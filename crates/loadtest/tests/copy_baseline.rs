//! The machinery of `bench`'s COPY baselines, on a few hundred rows: the parallel full-schema
//! COPY loads every row exactly as exported, and the restore-order path (strip, COPY, rebuild)
//! ends with the same rows and the catalog of a migrated database.

use std::collections::BTreeMap;
use std::time::Duration;

use mystira_loadtest::copy_baseline::{
    copy_into, count_domain_rows, export_domain_tables, restore_order_load, settle, strip_schema,
};
use mystira_postgres::initial_load::schema::{DOMAIN_TABLES, domain_catalog};
use sqlx::PgPool;

/// Accounts with a subscription, a profile with two badges and two completed scenarios each,
/// and pending sign-ups: every domain table and every foreign key has rows.
async fn fill(pool: &PgPool) {
    sqlx::raw_sql(
        r#"
        insert into accounts (id, email, role)
            select md5('a' || n)::uuid, 'user' || n || '@example.com', 'User'
            from generate_series(1, 300) n;
        insert into subscriptions (account_id) select id from accounts;
        insert into user_profiles (id, account_id, name)
            select md5('p' || id)::uuid, id, 'profile' from accounts;
        insert into user_badges (user_profile_id, badge_configuration_id, badge_name, axis)
            select p.id, 'config-' || b, 'badge', 'courage'
            from user_profiles p, generate_series(1, 2) b;
        insert into completed_scenarios (account_id, scenario_id)
            select a.id, 'scenario-' || s from accounts a, generate_series(1, 2) s;
        insert into pending_signups (email, code, expires_at)
            select 'signup' || n || '@example.com', 'c' || n, now() + interval '1 day'
            from generate_series(1, 50) n;
        "#,
    )
    .execute(pool)
    .await
    .expect("test rows");
}

/// Each table's rows as text, in key order.
async fn contents(pool: &PgPool) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    for table in DOMAIN_TABLES {
        let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select coalesce(string_agg(t::text, E'\\n' order by t.id), '') from {table} t"
        )))
        .fetch_one(pool)
        .await
        .expect("table contents");
        out.insert(table, text);
    }
    out
}

async fn empty_tables(pool: &PgPool) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "truncate {}",
        DOMAIN_TABLES.join(", ")
    )))
    .execute(pool)
    .await
    .expect("truncate");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn both_baselines_load_every_row_and_restore_order_ends_with_the_migrated_catalog(
    pool: PgPool,
) {
    let migrated_catalog = domain_catalog(&pool).await.expect("catalog");
    fill(&pool).await;
    let before = contents(&pool).await;
    let rows = count_domain_rows(&pool).await.expect("count");
    assert_eq!(rows, 300 * 7 + 50);
    let streams = 3;
    let export = export_domain_tables(&pool, streams).await.expect("export");
    assert_eq!(export.rows, rows);

    // full schema, three parallel streams per table
    empty_tables(&pool).await;
    settle(&pool, Duration::from_secs(5)).await.expect("settle");
    let loaded = copy_into(&pool, &export, streams)
        .await
        .expect("full-schema COPY");
    assert_eq!(loaded, rows);
    assert_eq!(
        contents(&pool).await,
        before,
        "full-schema COPY changed rows"
    );

    // restore order: the tables really are bare while the rows go in
    empty_tables(&pool).await;
    let schema = strip_schema(&pool).await.expect("strip");
    // only the checks stay, as pg_dump writes them into CREATE TABLE
    let left: Vec<String> = domain_catalog(&pool)
        .await
        .expect("catalog")
        .into_iter()
        .filter(|l| !(l.starts_with("constraint ") && l.contains(" CHECK ")))
        .collect();
    assert!(
        left.is_empty(),
        "left after stripping: {left:#?} (the {} objects dropped)",
        schema.objects()
    );
    let restored = restore_order_load(&pool, &schema, &export, streams)
        .await
        .expect("restore-order load");
    assert_eq!(restored.rows, rows);
    assert_eq!(
        contents(&pool).await,
        before,
        "restore-order COPY changed rows"
    );
    assert_eq!(
        domain_catalog(&pool).await.expect("catalog"),
        migrated_catalog,
        "the rebuilt schema differs from the migrated one"
    );
    assert!(
        migrated_catalog.len() > 50,
        "the catalog compared is the whole schema of the six tables: {migrated_catalog:#?}"
    );
}
