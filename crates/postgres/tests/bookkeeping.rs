//! Run records: a run whose process died is closed as `abandoned`, a live one is left alone.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mystira_postgres::bookkeeping::abandon_dead_runs;
use sqlx::PgPool;

async fn run(pool: &PgPool, owner: &str, started_ago_secs: i64) -> uuid::Uuid {
    sqlx::query_scalar(
        "insert into migration.runs (job, source, scope, started_at)
         values ('job', 'test', jsonb_build_object('owner', $1::text),
                 now() - make_interval(secs => $2))
         returning id",
    )
    .bind(owner)
    .bind(started_ago_secs as f64)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn status(pool: &PgPool, id: uuid::Uuid) -> String {
    sqlx::query_scalar("select status from migration.runs where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_run_without_a_live_lease_is_abandoned_and_a_live_one_is_not(pool: PgPool) {
    let dead = run(&pool, "host-a:101", 3600).await;
    let live = run(&pool, "host-b:202", 3600).await;
    let young = run(&pool, "host-c:303", 1).await;
    // the live process's worker holds a lease; the dead one's lease has expired
    sqlx::query(
        "insert into migration.work_ranges (job, unit, range_no, range_start, owner, lease_until)
         values ('job', 'Accounts', 0, '0', 'host-b:202/0', now() + interval '1 minute'),
                ('job', 'Accounts', 1, '0', 'host-a:101/0', now() - interval '1 minute')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let closed = abandon_dead_runs(&pool, "job", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(closed, 1);
    assert_eq!(status(&pool, dead).await, "abandoned");
    assert_eq!(status(&pool, live).await, "running");
    // younger than a lease: it may not have taken one yet
    assert_eq!(status(&pool, young).await, "running");
    // another job's runs are not this job's business
    assert_eq!(
        abandon_dead_runs(&pool, "other", Duration::from_secs(30))
            .await
            .unwrap(),
        0
    );
}
