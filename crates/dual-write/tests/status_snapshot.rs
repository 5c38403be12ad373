//! `status::MigrationState::read`, the one snapshot `status`, the admin API, `/metrics` and
//! `loadgen` report, against a real PostgreSQL (`sqlx::test`): each figure from its own table,
//! counting only what it names (the backfill job's ranges, open quarantine entries), and ages
//! measured from the snapshot's own `read_at`.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use mystira_dual_write::status::{MigrationState, RangeProgress};
use mystira_postgres::heartbeats::WorkerKind;
use sqlx::PgPool;

/// Seconds from `t` to the snapshot's read time.
fn age(state: &MigrationState, t: Option<DateTime<Utc>>) -> i64 {
    (state.read_at - t.expect("a time")).num_seconds()
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_snapshot_reads_each_figure_from_its_own_table(pool: PgPool) {
    let empty = MigrationState::read(&pool).await.unwrap();
    assert_eq!(empty.journal.entries, 0);
    assert_eq!(empty.outbox.rows, 0);
    assert_eq!(empty.backfill_ranges, RangeProgress { total: 0, done: 0 });
    assert!(empty.quarantine.is_empty());
    assert!(empty.replication_lag_seconds.is_empty());
    // every kind of worker is named, with no beat, even when none ever ran
    assert_eq!(
        empty.worker_beats,
        vec![(WorkerKind::ALL[0], None, 0), (WorkerKind::ALL[1], None, 0)]
    );

    sqlx::raw_sql(
        "insert into migration.retry_journal (container, document_id, op, source_ts, enqueued_at)
             values ('Accounts', 'a', 'delete', 1, now() - interval '2 minutes'),
                    ('Accounts', 'b', 'delete', 1, now());
         insert into migration.outbox (container, key, enqueued_at)
             values ('Accounts', '00000000-0000-0000-0000-000000000001',
                     now() - interval '3 minutes'),
                    ('Accounts', '00000000-0000-0000-0000-000000000001', now()),
                    ('Accounts', '00000000-0000-0000-0000-000000000002', now());
         insert into migration.work_ranges (job, unit, range_no, range_start, done)
             values ('backfill', 'Accounts', 0, '0', true),
                    ('backfill', 'Accounts', 1, '0', false),
                    ('backfill', 'UserProfiles', 0, '0', false),
                    ('other', 'Accounts', 0, '0', true);
         insert into migration.work_ranges (job, unit, range_no, range_start, caught_up_at)
             values ('replicate', 'Accounts', 0, '0', now() - interval '30 seconds'),
                    ('replicate', 'UserProfiles', 0, '0', null);
         insert into migration.quarantine (container, document_id, reason_code, message,
                                           document, resolved_at)
             values ('Accounts', 'x', 'invalid_email', 'm', '{}', null),
                    ('Accounts', 'y', 'invalid_email', 'm', '{}', null),
                    ('Accounts', 'z', 'invalid_email', 'm', '{}', now()),
                    ('UserProfiles', 'p', 'missing_account', 'm', '{}', null);",
    )
    .execute(&pool)
    .await
    .unwrap();

    let s = MigrationState::read(&pool).await.unwrap();
    assert_eq!(s.journal.entries, 2);
    assert!((119..=121).contains(&age(&s, s.journal.oldest)));
    assert_eq!((s.outbox.rows, s.outbox.aggregates), (3, 2));
    assert!((179..=181).contains(&age(&s, s.outbox.oldest)));
    // the backfill job's ranges only, every unit together
    assert_eq!(s.backfill_ranges, RangeProgress { total: 3, done: 1 });
    // per container, in container order; a range that never caught up has no lag
    assert_eq!(s.replication_lag_seconds.len(), 2);
    let (container, lag) = &s.replication_lag_seconds[0];
    assert_eq!(container, "Accounts");
    assert!(lag.is_some_and(|l| (29.0..=31.0).contains(&l)), "{lag:?}");
    assert_eq!(
        s.replication_lag_seconds[1],
        ("UserProfiles".to_owned(), None)
    );
    // open entries only, by container and reason
    assert_eq!(s.quarantine.len(), 2);
    assert_eq!(s.quarantine["Accounts"].len(), 1);
    assert_eq!(s.quarantine["Accounts"]["invalid_email"], 2);
    assert_eq!(s.quarantine["UserProfiles"]["missing_account"], 1);
    assert!(s.latest_backfill.is_none() && s.latest_verify.is_none());
}
