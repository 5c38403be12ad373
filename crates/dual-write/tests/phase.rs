//! Phase control against a real, freshly migrated database per test: every gate refuses with
//! the condition it names and opens once the condition is met (runs, journal and outbox rows
//! are seeded directly), the gate into phase 3 needs clean verifies in both directions and a
//! refusal names the command of the right direction, forcing is audited, backward moves need
//! no verify but may not strand outbox rows, leaving phase 3 goes through phase 2 and a
//! PostgreSQL-to-Cosmos verify started after it, canary overrides pass the same gates and name
//! an existing account, a domain move clears (or keeps) the overrides it leaves on the wrong
//! side, a dry run writes nothing, a move out of phase 3 waits for confirmation, and a
//! `PhaseWatcher` sees a change within 2 s through NOTIFY, through polling alone, and after
//! losing its connections.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mystira_domain::phase::Phase;
use mystira_dual_write::phase::{
    self, ChangeOptions, DecisionKind, GateConfig, OverrideAction, OverrideEffect,
    OverridePosition, PhaseError, PhaseSnapshot, PhaseWatcher, VerifyDirection,
    WATCHER_APPLICATION_NAME, WatcherOptions,
};
use mystira_postgres::phase::{self as store, ChangeRequest, Ungated};
use sqlx::{AssertSqlSafe, Connection as _, PgPool};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use uuid::Uuid;

/// The promise every running process relies on.
const SEEN_WITHIN: Duration = Duration::from_secs(2);

fn options(reason: &str) -> ChangeOptions {
    ChangeOptions {
        actor: "ada".to_owned(),
        reason: reason.to_owned(),
        force: false,
        gates: GateConfig::default(),
        wait_drain: None,
        keep_overrides: false,
        dry_run: false,
        confirmed: true,
    }
}

fn forced(reason: &str) -> ChangeOptions {
    ChangeOptions {
        force: true,
        ..options(reason)
    }
}

/// Puts the domain in `phase` without any gate (test setup).
async fn start_in(pool: &PgPool, p: Phase) {
    let request = ChangeRequest {
        actor: "setup",
        reason: "test setup",
        force: false,
    };
    store::set_phase(pool, p, request, &Ungated).await.unwrap();
}

async fn seed_backfill(pool: &PgPool, status: &str, started_ago_minutes: i32) {
    sqlx::query(
        "insert into migration.runs (job, source, started_at, finished_at, status)
         values ('backfill', 'test', now() - make_interval(mins => $1),
                 case when $2 = 'running' then null else now() - make_interval(mins => $1) end, $2)",
    )
    .bind(started_ago_minutes)
    .bind(status)
    .execute(pool)
    .await
    .unwrap();
}

/// A verify run of the whole key space that finished `hours_ago`: clean or with drift.
async fn seed_verify(pool: &PgPool, clean: bool, hours_ago: i32) {
    let (status, outcome) = if clean {
        ("succeeded", "clean")
    } else {
        ("failed", "drift")
    };
    sqlx::query(
        "insert into migration.runs (job, source, started_at, finished_at, status, counts, scope)
         values ('verify', 'test', now() - make_interval(hours => $1),
                 now() - make_interval(hours => $1), $2,
                 jsonb_build_object('outcome', $3::text),
                 '{\"first_bucket\": 0, \"last_bucket\": 255}')",
    )
    .bind(hours_ago)
    .bind(status)
    .bind(outcome)
    .execute(pool)
    .await
    .unwrap();
}

/// A verify run of the whole key space in `direction` that started `started_ago_secs` ago and
/// took a second: clean or with drift.
async fn seed_verify_in(
    pool: &PgPool,
    direction: VerifyDirection,
    clean: bool,
    started_ago_secs: i32,
) {
    let (status, outcome) = if clean {
        ("succeeded", "clean")
    } else {
        ("failed", "drift")
    };
    sqlx::query(
        "insert into migration.runs (job, source, started_at, finished_at, status, counts, scope)
         values ('verify', 'test', now() - make_interval(secs => $1),
                 now() - make_interval(secs => $1 - 1), $2,
                 jsonb_build_object('outcome', $3::text),
                 jsonb_build_object('first_bucket', 0, 'last_bucket', 255, 'direction', $4::text))",
    )
    .bind(started_ago_secs)
    .bind(status)
    .bind(outcome)
    .bind(direction.name())
    .execute(pool)
    .await
    .unwrap();
}

/// Moves every audit row that left phase 3 `secs` into the past (as if it had happened then).
async fn backdate_phase_3_exits(pool: &PgPool, secs: i32) {
    sqlx::query(
        "update migration.phase_transitions set changed_at = changed_at - make_interval(secs => $1)
         where from_phase = 'postgres-only'",
    )
    .bind(secs)
    .execute(pool)
    .await
    .unwrap();
}

/// An account row PostgreSQL holds (an override must name one), written as a copy from the
/// source would be: no outbox row (the outbox gates are not what these tests are about).
async fn an_account(pool: &PgPool) -> Uuid {
    let id = Uuid::new_v4();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("select set_config('mystira.keep_source_timestamps', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("insert into accounts (id, email) values ($1, 'canary@example.com')")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn seed_journal(pool: &PgPool, rows: i32) {
    sqlx::query(
        "insert into migration.retry_journal (container, document_id, op)
         select 'Accounts', 'doc-' || n, 'delete' from generate_series(1, $1) n",
    )
    .bind(rows)
    .execute(pool)
    .await
    .unwrap();
}

async fn seed_outbox(pool: &PgPool, rows: i32, oldest_minutes_ago: i32) {
    sqlx::query(
        "insert into migration.outbox (container, key, enqueued_at)
         select 'Accounts', gen_random_uuid(),
                now() - make_interval(mins => case when n = 1 then $2 else 0 end)
         from generate_series(1, $1) n",
    )
    .bind(rows)
    .bind(oldest_minutes_ago)
    .execute(pool)
    .await
    .unwrap();
}

async fn clear(pool: &PgPool, table: &str) {
    sqlx::query(AssertSqlSafe(format!("delete from migration.{table}")))
        .execute(pool)
        .await
        .unwrap();
}

async fn domain_phase(pool: &PgPool) -> Phase {
    store::current(pool).await.unwrap().phase
}

fn codes(decision: &phase::Decision) -> Vec<&'static str> {
    decision.unmet.iter().map(|c| c.code()).collect()
}

mod gates {
    use super::*;

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn dual_write_needs_a_completed_backfill(pool: PgPool) {
        let to = Phase::DualWriteCosmosRead;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Refused);
        assert_eq!(codes(&d), ["backfill_never_run"]);
        assert!(d.unmet[0].to_string().contains("mystira-users migrate"));

        seed_backfill(&pool, "succeeded", 60).await;
        seed_backfill(&pool, "interrupted", 30).await;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["backfill_not_completed"]);
        assert!(
            d.unmet[0].to_string().contains("interrupted"),
            "{}",
            d.unmet[0]
        );

        seed_backfill(&pool, "running", 10).await;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert!(
            d.unmet[0].to_string().contains("still running"),
            "{}",
            d.unmet[0]
        );
        assert_eq!(domain_phase(&pool).await, Phase::CosmosOnly);

        seed_backfill(&pool, "succeeded", 1).await;
        let d = phase::set_phase(&pool, to, None, &options("backfill done"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        assert!(!d.forced);
        assert_eq!(domain_phase(&pool).await, to);
    }

    /// Issue 34, item 5: a forward move out of a dual-write phase waits while the replicator
    /// that phase needs is dead (it beat, then fell silent without stopping); a live one, or
    /// one its operator stopped, lets the move through.
    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn leaving_a_dual_write_phase_forward_waits_while_its_replicator_is_dead(pool: PgPool) {
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        seed_verify(&pool, true, 1).await;
        let to = Phase::DualWritePostgresRead;
        let beat = |worker: &'static str, state: &'static str, ago_secs: i32| {
            let pool = pool.clone();
            async move {
                sqlx::query(
                    "insert into migration.worker_heartbeats
                         (worker, kind, host, pid, mode, beat_at, state)
                     values ($1, 'replicate', 'h', 1, 'auto',
                             now() - make_interval(secs => $3), $2)
                     on conflict (worker) do update
                         set beat_at = excluded.beat_at, state = excluded.state",
                )
                .bind(worker)
                .bind(state)
                .bind(ago_secs)
                .execute(&pool)
                .await
                .unwrap();
            }
        };
        beat("replicate@h:1", "running", 120).await;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Refused);
        assert_eq!(codes(&d), ["replicator_dead"]);
        assert!(
            d.unmet[0].to_string().contains("replicate@h:1"),
            "{}",
            d.unmet[0]
        );
        // a replicator beating again opens the gate
        beat("replicate@h:2", "running", 1).await;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_replicator_stopped_by_its_operator_is_not_dead(pool: PgPool) {
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        seed_verify(&pool, true, 1).await;
        sqlx::query(
            "insert into migration.worker_heartbeats (worker, kind, host, pid, beat_at, state)
             values ('replicate@h:1', 'replicate', 'h', 1, now() - interval '1 hour', 'stopped')",
        )
        .execute(&pool)
        .await
        .unwrap();
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn postgres_read_needs_a_recent_clean_verify_and_an_empty_retry_journal(pool: PgPool) {
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        let to = Phase::DualWritePostgresRead;
        seed_journal(&pool, 2).await;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Refused);
        assert_eq!(codes(&d), ["verify_missing", "retry_journal_not_empty"]);
        assert!(
            d.unmet[1].to_string().contains("2 write(s)"),
            "{}",
            d.unmet[1]
        );

        seed_verify(&pool, true, 30).await;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["verify_too_old", "retry_journal_not_empty"]);
        let message = d.unmet[0].to_string();
        assert!(
            message.contains("1d 6h") && message.contains("1d 0h"),
            "{message}"
        );

        // a larger maximum age accepts the same verify
        let lenient = ChangeOptions {
            gates: GateConfig {
                max_verify_age: Duration::from_secs(48 * 3600),
            },
            ..options("go")
        };
        let d = phase::set_phase(&pool, to, None, &lenient).await.unwrap();
        assert_eq!(codes(&d), ["retry_journal_not_empty"]);

        clear(&pool, "retry_journal").await;
        seed_verify(&pool, true, 1).await;
        let d = phase::set_phase(&pool, to, None, &options("verified"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        assert_eq!(domain_phase(&pool).await, to);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_verify_that_found_drift_after_the_clean_one_closes_the_gate(pool: PgPool) {
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        seed_verify(&pool, true, 3).await;
        seed_verify(&pool, false, 2).await;
        let to = Phase::DualWritePostgresRead;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["verify_drift_since_clean"]);

        seed_verify(&pool, true, 1).await;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn postgres_only_needs_an_empty_outbox_and_recent_clean_verifies_both_ways(pool: PgPool) {
        start_in(&pool, Phase::DualWritePostgresRead).await;
        let to = Phase::PostgresOnly;
        seed_outbox(&pool, 4, 15).await;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(
            codes(&d),
            [
                "outbox_not_empty",
                "verify_missing",
                "verify_pg_to_cosmos_missing"
            ]
        );
        // each verify condition names the command of its own direction
        assert!(
            d.unmet[1].to_string().contains("`mystira-users verify`"),
            "{}",
            d.unmet[1]
        );
        assert!(
            d.unmet[2]
                .to_string()
                .contains("`mystira-users verify --direction pg-to-cosmos`"),
            "{}",
            d.unmet[2]
        );

        // a clean Cosmos-to-PostgreSQL verify alone does not open it (issue 34, item 3)
        clear(&pool, "outbox").await;
        seed_verify(&pool, true, 0).await;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["verify_pg_to_cosmos_missing"]);
        let status = phase::status(&pool, &GateConfig::default()).await.unwrap();
        let next: Vec<_> = status.next_unmet.iter().map(|c| c.code()).collect();
        assert_eq!(next, ["verify_pg_to_cosmos_missing"], "phase show agrees");

        seed_verify_in(&pool, VerifyDirection::PgToCosmos, true, 25 * 3600).await;
        let d = phase::set_phase(&pool, to, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["verify_pg_to_cosmos_too_old"]);

        seed_verify_in(&pool, VerifyDirection::PgToCosmos, true, 60).await;
        let d = phase::set_phase(&pool, to, None, &options("archive cosmos"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        assert_eq!(domain_phase(&pool).await, to);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn the_directions_do_not_stand_in_for_each_other(pool: PgPool) {
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        seed_verify_in(&pool, VerifyDirection::PgToCosmos, true, 60).await;
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["verify_missing"]);
        // drift found towards Cosmos does not close the gate into 2 either
        seed_verify(&pool, true, 0).await;
        seed_verify_in(&pool, VerifyDirection::PgToCosmos, false, 0).await;
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn drift_advice_names_the_repair_from_the_primary_store(pool: PgPool) {
        // phase 1: Cosmos is the primary, `verify --repair` re-copies from it
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        seed_verify(&pool, true, 2).await;
        seed_verify(&pool, false, 1).await;
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["verify_drift_since_clean"]);
        let message = d.unmet[0].to_string();
        assert!(
            message.contains("`mystira-users verify --repair`"),
            "{message}"
        );

        // phase 2: PostgreSQL is the primary: the repair delivers its state to Cosmos
        start_in(&pool, Phase::DualWritePostgresRead).await;
        seed_verify_in(&pool, VerifyDirection::PgToCosmos, true, 120).await;
        seed_verify_in(&pool, VerifyDirection::PgToCosmos, false, 60).await;
        let d = phase::set_phase(&pool, Phase::PostgresOnly, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(
            codes(&d),
            [
                "verify_drift_since_clean",
                "verify_pg_to_cosmos_drift_since_clean"
            ]
        );
        for c in &d.unmet {
            let message = c.to_string();
            assert!(
                message.contains("`mystira-users verify --direction pg-to-cosmos --repair`"),
                "{message}"
            );
        }
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["unmet"][1]["direction"], "pg-to-cosmos");
        assert_eq!(json["unmet"][1]["repair_direction"], "pg-to-cosmos");
        assert_eq!(json["unmet"][1]["check"], "verify_pg_to_cosmos");
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_forward_jump_meets_the_gate_of_every_step_it_passes(pool: PgPool) {
        seed_journal(&pool, 1).await;
        seed_outbox(&pool, 1, 0).await;
        let d = phase::set_phase(&pool, Phase::PostgresOnly, None, &options("go"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Refused);
        assert_eq!(
            codes(&d),
            [
                "backfill_never_run",
                "verify_missing",
                "retry_journal_not_empty",
                "outbox_not_empty",
                "verify_pg_to_cosmos_missing"
            ]
        );

        seed_backfill(&pool, "succeeded", 5).await;
        seed_verify(&pool, true, 0).await;
        seed_verify_in(&pool, VerifyDirection::PgToCosmos, true, 30).await;
        clear(&pool, "retry_journal").await;
        clear(&pool, "outbox").await;
        let d = phase::set_phase(&pool, Phase::PostgresOnly, None, &options("all met"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        let t = d.transition.unwrap();
        assert_eq!(
            (t.from_phase, t.to_phase),
            (Phase::CosmosOnly, Phase::PostgresOnly)
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn force_goes_past_a_refusing_gate_and_the_audit_says_forced(pool: PgPool) {
        let d = phase::set_phase(&pool, Phase::DualWriteCosmosRead, None, &forced("incident"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied);
        assert!(d.forced);
        assert_eq!(codes(&d), ["backfill_never_run"], "what was forced past");
        assert!(d.summary().starts_with("FORCED"), "{}", d.summary());
        let audit = &phase::history(&pool, 1).await.unwrap()[0];
        assert!(audit.forced);
        assert_eq!(audit.changed_by, "ada");
        assert_eq!(audit.reason, "incident");
        assert_eq!(audit.account_id, None);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_change_without_a_reason_is_rejected(pool: PgPool) {
        let err = phase::set_phase(&pool, Phase::CosmosOnly, None, &options("  "))
            .await
            .unwrap_err();
        assert!(matches!(err, PhaseError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("reason"), "{err}");
    }
}

mod backward {
    use super::*;

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn backward_moves_need_no_verify_or_backfill(pool: PgPool) {
        start_in(&pool, Phase::DualWritePostgresRead).await;
        seed_journal(&pool, 3).await;
        for to in [Phase::DualWriteCosmosRead, Phase::CosmosOnly] {
            let d = phase::set_phase(&pool, to, None, &options("roll back"))
                .await
                .unwrap();
            assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
            assert!(!d.forced);
            assert_eq!(domain_phase(&pool).await, to);
        }
        // out of phase 3 into phase 2 is open too
        start_in(&pool, Phase::PostgresOnly).await;
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &options("back"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn leaving_postgres_only_for_a_cosmos_read_phase_must_go_through_phase_2(pool: PgPool) {
        start_in(&pool, Phase::PostgresOnly).await;
        // even with a clean verify towards Cosmos: phase-3 writes go on while it runs
        seed_verify_in(&pool, VerifyDirection::PgToCosmos, true, 1).await;
        for to in [Phase::DualWriteCosmosRead, Phase::CosmosOnly] {
            let d = phase::set_phase(&pool, to, None, &options("roll back"))
                .await
                .unwrap();
            assert_eq!(d.result, DecisionKind::Refused, "{}", d.summary());
            assert_eq!(codes(&d), ["postgres_only_exit_skips_phase_2"]);
            let message = d.unmet[0].to_string();
            assert!(
                message.contains("`mystira-users phase set dual-write-postgres-read --reason")
                    && message.contains("`mystira-users verify --direction pg-to-cosmos --repair`"),
                "{message}"
            );
        }
        assert_eq!(domain_phase(&pool).await, Phase::PostgresOnly);
        // --force stays the way past, audited
        let d = phase::set_phase(&pool, Phase::DualWriteCosmosRead, None, &forced("incident"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied);
        assert!(d.forced);
        assert_eq!(codes(&d), ["postgres_only_exit_skips_phase_2"]);
        assert!(phase::history(&pool, 1).await.unwrap()[0].forced);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn after_phase_3_cosmos_read_needs_a_clean_pg_to_cosmos_verify_started_after_leaving(
        pool: PgPool,
    ) {
        start_in(&pool, Phase::PostgresOnly).await;
        // clean before phase 3 was left: proves nothing about the writes made in it
        seed_verify_in(&pool, VerifyDirection::PgToCosmos, true, 120).await;
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &options("back"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied);
        let to = Phase::DualWriteCosmosRead;
        let d = phase::set_phase(&pool, to, None, &options("roll back"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Refused, "{}", d.summary());
        assert_eq!(codes(&d), ["pg_to_cosmos_unverified_since_phase_3"]);
        let message = d.unmet[0].to_string();
        assert!(
            message.contains("`mystira-users verify --direction pg-to-cosmos --repair`"),
            "{message}"
        );

        // phase 3 was left a minute ago: a verify that started 55 s ago began inside the
        // settling time (calls that read phase 3 may still have been writing); 45 s ago is after
        backdate_phase_3_exits(&pool, 60).await;
        seed_verify_in(&pool, VerifyDirection::PgToCosmos, true, 55).await;
        let d = phase::set_phase(&pool, to, None, &options("roll back"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["pg_to_cosmos_unverified_since_phase_3"]);
        // a clean verify of the other direction does not count either
        seed_verify(&pool, true, 0).await;
        let d = phase::set_phase(&pool, to, None, &options("roll back"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["pg_to_cosmos_unverified_since_phase_3"]);

        seed_verify_in(&pool, VerifyDirection::PgToCosmos, true, 45).await;
        // ... but drift found after it closes the gate again, until a repair verifies clean
        seed_verify_in(&pool, VerifyDirection::PgToCosmos, false, 30).await;
        let d = phase::set_phase(&pool, to, None, &options("roll back"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["verify_pg_to_cosmos_drift_since_clean"]);
        seed_verify_in(&pool, VerifyDirection::PgToCosmos, true, 10).await;
        let d = phase::set_phase(&pool, to, None, &options("repaired"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        assert_eq!(domain_phase(&pool).await, to);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_canary_leaving_phase_3_is_held_to_the_same_rule(pool: PgPool) {
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        let canary = an_account(&pool).await;
        let db = &pool;
        let pin = move |p| async move {
            phase::set_phase(db, p, Some(canary), &forced("canary"))
                .await
                .unwrap()
        };
        pin(Phase::PostgresOnly).await;
        // clearing it returns it to phase 1 straight from 3
        let d = phase::clear_override(&pool, canary, &options("done"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Refused);
        assert_eq!(codes(&d), ["postgres_only_exit_skips_phase_2"]);
        assert!(
            d.unmet[0]
                .to_string()
                .contains(&format!("--account {canary}")),
            "{}",
            d.unmet[0]
        );
        pin(Phase::DualWritePostgresRead).await;
        let d = phase::clear_override(&pool, canary, &options("done"))
            .await
            .unwrap();
        assert_eq!(codes(&d), ["pg_to_cosmos_unverified_since_phase_3"]);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_move_out_of_postgres_only_needs_confirmation(pool: PgPool) {
        start_in(&pool, Phase::PostgresOnly).await;
        let unconfirmed = ChangeOptions {
            confirmed: false,
            ..options("back")
        };
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &unconfirmed)
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::NeedsConfirmation, "{}", d.summary());
        assert!(d.confirmation_required);
        assert!(d.transition.is_none());
        assert_eq!(domain_phase(&pool).await, Phase::PostgresOnly);
        // a dry run says so without asking
        let dry = ChangeOptions {
            dry_run: true,
            ..unconfirmed.clone()
        };
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &dry)
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::WouldApply);
        assert!(d.confirmation_required);
        // a refused move is refused, not asked about
        let d = phase::set_phase(&pool, Phase::CosmosOnly, None, &unconfirmed)
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Refused);
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &options("back"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn leaving_postgres_read_with_outbox_rows_is_refused_naming_count_and_age(pool: PgPool) {
        start_in(&pool, Phase::DualWritePostgresRead).await;
        seed_outbox(&pool, 3, 10).await;
        for to in [Phase::DualWriteCosmosRead, Phase::CosmosOnly] {
            let d = phase::set_phase(&pool, to, None, &options("roll back"))
                .await
                .unwrap();
            assert_eq!(d.result, DecisionKind::Refused);
            assert_eq!(codes(&d), ["outbox_not_empty"]);
            let message = d.unmet[0].to_string();
            assert!(message.contains("3 write(s)"), "{message}");
            assert!(message.contains("10m"), "{message}");
            let json = serde_json::to_value(&d).unwrap();
            assert_eq!(json["unmet"][0]["rows"], 3);
            assert!(json["unmet"][0]["oldest_age_seconds"].as_u64().unwrap() >= 600);
        }
        assert_eq!(domain_phase(&pool).await, Phase::DualWritePostgresRead);

        let d = phase::set_phase(&pool, Phase::DualWriteCosmosRead, None, &forced("outage"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied);
        assert!(d.forced);
        assert!(phase::history(&pool, 1).await.unwrap()[0].forced);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn wait_drain_lets_the_rollback_through_once_the_relay_empties_the_outbox(pool: PgPool) {
        start_in(&pool, Phase::DualWritePostgresRead).await;
        seed_outbox(&pool, 2, 1).await;
        // stands in for the relay: delivers (deletes) the rows a moment later
        let relay = {
            let pool = pool.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                clear(&pool, "outbox").await;
            })
        };
        let waiting = ChangeOptions {
            wait_drain: Some(Duration::from_secs(10)),
            ..options("roll back")
        };
        let started = Instant::now();
        let d = phase::set_phase(&pool, Phase::DualWriteCosmosRead, None, &waiting)
            .await
            .unwrap();
        relay.await.unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        assert!(!d.forced);
        let wait = d.drain_wait.unwrap();
        assert!(wait.drained);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stopped waiting once drained"
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn wait_drain_gives_up_after_its_bound_and_refuses(pool: PgPool) {
        start_in(&pool, Phase::DualWritePostgresRead).await;
        seed_outbox(&pool, 1, 0).await;
        let waiting = ChangeOptions {
            wait_drain: Some(Duration::from_millis(600)),
            ..options("roll back")
        };
        let started = Instant::now();
        let d = phase::set_phase(&pool, Phase::DualWriteCosmosRead, None, &waiting)
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(d.result, DecisionKind::Refused);
        assert!(!d.drain_wait.unwrap().drained);
        assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }
}

mod overrides {
    use super::*;

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_canary_override_passes_the_same_gates_as_the_domain(pool: PgPool) {
        let canary = an_account(&pool).await;
        let to = Phase::DualWritePostgresRead;
        let d = phase::set_phase(&pool, to, Some(canary), &options("canary"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Refused);
        assert_eq!(d.account, Some(canary));
        assert_eq!(codes(&d), ["backfill_never_run", "verify_missing"]);

        seed_backfill(&pool, "succeeded", 5).await;
        seed_verify(&pool, true, 0).await;
        let d = phase::set_phase(&pool, to, Some(canary), &options("canary"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        let audit = d.transition.unwrap();
        assert_eq!(audit.account_id, Some(canary));
        assert_eq!(audit.from_phase, Phase::CosmosOnly);
        assert_eq!(
            domain_phase(&pool).await,
            Phase::CosmosOnly,
            "domain unmoved"
        );

        let status = phase::status(&pool, &GateConfig::default()).await.unwrap();
        assert_eq!(status.overrides.len(), 1);
        assert_eq!(status.overrides[0].details.phase, to);

        // back to the domain phase (0) strands outbox rows: refused like a domain rollback
        seed_outbox(&pool, 1, 0).await;
        let d = phase::clear_override(&pool, canary, &options("canary done"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Refused);
        assert_eq!(codes(&d), ["outbox_not_empty"]);
        clear(&pool, "outbox").await;
        let d = phase::clear_override(&pool, canary, &options("canary done"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        assert_eq!((d.from, d.to), (to, Phase::CosmosOnly));
        let d = phase::clear_override(&pool, canary, &options("again"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::NoOverride);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn status_reports_the_gate_of_the_next_forward_step(pool: PgPool) {
        let status = phase::status(&pool, &GateConfig::default()).await.unwrap();
        assert_eq!(status.domain.phase, Phase::CosmosOnly);
        assert_eq!(status.next, Some(Phase::DualWriteCosmosRead));
        let codes: Vec<_> = status.next_unmet.iter().map(|c| c.code()).collect();
        assert_eq!(codes, ["backfill_never_run"]);
        seed_backfill(&pool, "succeeded", 1).await;
        let status = phase::status(&pool, &GateConfig::default()).await.unwrap();
        assert!(status.next_unmet.is_empty());
        assert!(
            status.summary().contains("the gate is open"),
            "{}",
            status.summary()
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn an_override_must_name_an_account_postgresql_holds(pool: PgPool) {
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        let unknown = Uuid::new_v4();
        // no other gate in the way: pinning it in the domain phase, or moving it back
        for to in [Phase::DualWriteCosmosRead, Phase::CosmosOnly] {
            let d = phase::set_phase(&pool, to, Some(unknown), &options("canary"))
                .await
                .unwrap();
            assert_eq!(d.result, DecisionKind::Refused, "{}", d.summary());
            assert_eq!(codes(&d), ["account_not_found"]);
        }
        assert!(
            phase::status(&pool, &GateConfig::default())
                .await
                .unwrap()
                .overrides
                .is_empty()
        );
        let known = an_account(&pool).await;
        let d = phase::set_phase(&pool, Phase::CosmosOnly, Some(known), &options("canary"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        // forced: set anyway (an account Cosmos holds that is not copied yet), and shown so
        let d = phase::set_phase(
            &pool,
            Phase::CosmosOnly,
            Some(unknown),
            &forced("not copied"),
        )
        .await
        .unwrap();
        assert!(d.forced);
        let status = phase::status(&pool, &GateConfig::default()).await.unwrap();
        let shown = status
            .overrides
            .iter()
            .find(|o| o.details.account_id == unknown)
            .unwrap();
        assert!(!shown.account_exists);
        assert!(
            status.summary().contains("no such account"),
            "{}",
            status.summary()
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_rollback_clears_the_canary_it_leaves_ahead_with_an_audit_row(pool: PgPool) {
        // the case: a canary in phase 2, the domain follows, then rolls back to 1
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        let canary = an_account(&pool).await;
        phase::set_phase(
            &pool,
            Phase::DualWritePostgresRead,
            Some(canary),
            &forced("canary"),
        )
        .await
        .unwrap();
        start_in(&pool, Phase::DualWritePostgresRead).await;
        let d = phase::set_phase(
            &pool,
            Phase::DualWriteCosmosRead,
            None,
            &options("roll back"),
        )
        .await
        .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        assert_eq!(d.overrides.len(), 1);
        assert_eq!(d.overrides[0].account_id, canary);
        assert_eq!(d.overrides[0].action, OverrideAction::Cleared);
        assert!(d.summary().contains("cleared"), "{}", d.summary());
        assert_eq!(
            d.transition.as_ref().unwrap().overrides_cleared,
            vec![canary]
        );
        // the canary is back on Cosmos with the rest
        let (_, overrides) = store::load_all(&pool).await.unwrap();
        assert!(overrides.is_empty(), "{overrides:?}");
        let audit = phase::history(&pool, 5).await.unwrap();
        let row = audit.iter().find(|t| t.account_id == Some(canary)).unwrap();
        assert_eq!(
            (row.from_phase, row.to_phase),
            (Phase::DualWritePostgresRead, Phase::DualWriteCosmosRead)
        );

        // forward into 3 with a canary pinned in 2: left behind, its writes would still
        // reach Cosmos; it is cleared and moves into 3 with the domain
        let behind = an_account(&pool).await;
        start_in(&pool, Phase::DualWritePostgresRead).await;
        phase::set_phase(
            &pool,
            Phase::DualWritePostgresRead,
            Some(behind),
            &forced("pin"),
        )
        .await
        .unwrap();
        let d = phase::set_phase(&pool, Phase::PostgresOnly, None, &forced("cutover"))
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied);
        assert_eq!(d.overrides.len(), 1, "{:?}", d.overrides);
        assert_eq!(d.overrides[0].account_id, behind);
        assert_eq!(d.overrides[0].action, OverrideAction::Cleared);
        let (state, overrides) = store::load_all(&pool).await.unwrap();
        assert_eq!(state.phase, Phase::PostgresOnly);
        assert!(overrides.is_empty(), "{overrides:?}");
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn keep_overrides_keeps_them_and_the_domain_row_says_so(pool: PgPool) {
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        let canary = an_account(&pool).await;
        phase::set_phase(
            &pool,
            Phase::DualWritePostgresRead,
            Some(canary),
            &forced("canary"),
        )
        .await
        .unwrap();
        let keep = ChangeOptions {
            keep_overrides: true,
            ..options("roll back, canary stays")
        };
        let d = phase::set_phase(&pool, Phase::CosmosOnly, None, &keep)
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
        assert_eq!(d.overrides[0].action, OverrideAction::Kept);
        let t = d.transition.unwrap();
        assert_eq!(t.overrides_kept, vec![canary]);
        assert!(t.overrides_cleared.is_empty());
        let (_, overrides) = store::load_all(&pool).await.unwrap();
        assert_eq!(overrides.get(&canary), Some(&Phase::DualWritePostgresRead));
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_cleared_canary_passes_the_gate_of_its_own_move(pool: PgPool) {
        // domain in 2, a canary in 3; rolling the domain back to 1 would take the canary
        // straight from 3 to 1
        start_in(&pool, Phase::DualWritePostgresRead).await;
        let canary = an_account(&pool).await;
        phase::set_phase(&pool, Phase::PostgresOnly, Some(canary), &forced("canary"))
            .await
            .unwrap();
        let d = phase::set_phase(
            &pool,
            Phase::DualWriteCosmosRead,
            None,
            &options("roll back"),
        )
        .await
        .unwrap();
        assert_eq!(d.result, DecisionKind::Refused, "{}", d.summary());
        assert_eq!(codes(&d), ["postgres_only_exit_skips_phase_2"]);
        let message = d.unmet[0].to_string();
        assert!(
            message.contains(&canary.to_string()) && message.contains("--keep-overrides"),
            "{message}"
        );
        assert_eq!(domain_phase(&pool).await, Phase::DualWritePostgresRead);
        // keeping the canary in 3, the domain may go (nothing left phase 3)
        let keep = ChangeOptions {
            keep_overrides: true,
            ..options("roll back, canary stays")
        };
        let d = phase::set_phase(&pool, Phase::DualWriteCosmosRead, None, &keep)
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::Applied, "{}", d.summary());
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn status_lists_each_override_with_what_the_next_move_and_a_rollback_mean(pool: PgPool) {
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        let (ahead, behind) = (an_account(&pool).await, an_account(&pool).await);
        phase::set_phase(
            &pool,
            Phase::DualWritePostgresRead,
            Some(ahead),
            &forced("canary"),
        )
        .await
        .unwrap();
        phase::set_phase(&pool, Phase::CosmosOnly, Some(behind), &forced("held back"))
            .await
            .unwrap();
        let status = phase::status(&pool, &GateConfig::default()).await.unwrap();
        let of = |id| {
            status
                .overrides
                .iter()
                .find(|o| o.details.account_id == id)
                .unwrap()
        };
        let a = of(ahead);
        assert_eq!(a.position, OverridePosition::Ahead);
        assert_eq!(a.on_next.as_ref().unwrap().effect, OverrideEffect::Pins);
        assert_eq!(
            a.on_rollback.as_ref().unwrap().effect,
            OverrideEffect::WrongSide
        );
        let b = of(behind);
        assert_eq!(b.position, OverridePosition::Behind);
        assert_eq!(
            b.on_next.as_ref().unwrap().effect,
            OverrideEffect::WrongSide
        );
        assert_eq!(b.on_rollback.as_ref().unwrap().effect, OverrideEffect::Pins);
        let json = serde_json::to_value(&status).unwrap();
        let first = &json["overrides"][0];
        for field in [
            "account_id",
            "phase",
            "account_exists",
            "position",
            "on_next",
            "on_rollback",
        ] {
            assert!(!first[field].is_null(), "{field} missing: {first}");
        }
        assert!(first["on_next"]["meaning"].is_string());
        let text = status.summary();
        assert!(
            text.contains("on next:") && text.contains("--keep-overrides"),
            "{text}"
        );
        // the next move's gate counts the held-back account's own move (0 to 2)
        let next: Vec<_> = status.next_unmet.iter().map(|c| c.code()).collect();
        assert_eq!(next, ["verify_missing", "backfill_never_run"]);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_dry_run_lists_every_check_and_the_overrides_and_writes_nothing(pool: PgPool) {
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        let behind = an_account(&pool).await;
        phase::set_phase(&pool, Phase::CosmosOnly, Some(behind), &forced("held back"))
            .await
            .unwrap();
        seed_verify(&pool, true, 0).await;
        seed_journal(&pool, 1).await;
        let before = phase::history(&pool, 100).await.unwrap().len();
        let dry = ChangeOptions {
            dry_run: true,
            ..options("try")
        };
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &dry)
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::WouldRefuse, "{}", d.summary());
        assert!(d.dry_run && d.transition.is_none());
        let gates: Vec<_> = d.gates.iter().map(|g| (g.check, g.passed)).collect();
        assert_eq!(
            gates,
            [
                ("replicator_live", true),
                ("verify_cosmos_to_pg", true),
                ("retry_journal", false),
                ("backfill", false)
            ],
            "the domain's 1 to 2, then the cleared canary's 0 to 2"
        );
        assert_eq!(d.overrides[0].account_id, behind);
        assert_eq!(d.overrides[0].action, OverrideAction::Cleared);
        let text = d.summary();
        assert!(
            text.contains("DRY RUN") && text.contains("FAIL  retry_journal"),
            "{text}"
        );
        assert_eq!(phase::history(&pool, 100).await.unwrap().len(), before);
        assert_eq!(domain_phase(&pool).await, Phase::DualWriteCosmosRead);

        // forced: it would apply, forced; still nothing written
        let dry_forced = ChangeOptions { force: true, ..dry };
        let d = phase::set_phase(&pool, Phase::DualWritePostgresRead, None, &dry_forced)
            .await
            .unwrap();
        assert_eq!(d.result, DecisionKind::WouldApply);
        assert!(d.forced);
        assert_eq!(phase::history(&pool, 100).await.unwrap().len(), before);
    }
}

mod watcher {
    use super::*;

    /// Waits (at most `within`) until the snapshot satisfies `ok`.
    async fn seen(
        rx: &mut watch::Receiver<PhaseSnapshot>,
        within: Duration,
        ok: impl Fn(&PhaseSnapshot) -> bool,
    ) -> bool {
        timeout(within, rx.wait_for(|s| ok(s)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn watcher_connections(pool: &PgPool) -> i64 {
        sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and application_name = $1",
        )
        .bind(WATCHER_APPLICATION_NAME)
        .fetch_one(pool)
        .await
        .unwrap()
    }

    /// Waits (bounded) until the watcher holds `n` connections.
    async fn until_connections(pool: &PgPool, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while watcher_connections(pool).await != n {
            assert!(
                Instant::now() < deadline,
                "watcher connections never became {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn the_watcher_sees_a_change_within_two_seconds_through_notify(pool: PgPool) {
        // polling every minute: only a notification can deliver the change in time
        let slow_poll = WatcherOptions {
            poll: Duration::from_secs(60),
            ..WatcherOptions::default()
        };
        let watcher = PhaseWatcher::start_with(pool.clone(), slow_poll)
            .await
            .unwrap();
        assert_eq!(watcher.domain_phase(), Phase::CosmosOnly);
        let mut rx = watcher.subscribe();
        // the listener connects in the background: a change before it listens would only be
        // caught by its catch-up read, which is not what this test is about
        until_connections(&pool, 2).await;

        start_in(&pool, Phase::DualWriteCosmosRead).await;
        assert!(
            seen(&mut rx, SEEN_WITHIN, |s| s.domain
                == Phase::DualWriteCosmosRead)
            .await
        );
        assert_eq!(watcher.domain_phase(), Phase::DualWriteCosmosRead);

        let canary = Uuid::new_v4();
        let request = ChangeRequest {
            actor: "ada",
            reason: "canary",
            force: false,
        };
        store::set_override(
            &pool,
            canary,
            Phase::DualWritePostgresRead,
            request,
            &Ungated,
        )
        .await
        .unwrap();
        assert!(seen(&mut rx, SEEN_WITHIN, |s| !s.overrides.is_empty()).await);
        assert_eq!(
            watcher.phase_for(Some(canary)),
            Phase::DualWritePostgresRead
        );
        assert_eq!(
            watcher.phase_for(Some(Uuid::new_v4())),
            Phase::DualWriteCosmosRead
        );
        assert_eq!(watcher.phase_for(None), Phase::DualWriteCosmosRead);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn the_watcher_sees_a_change_within_two_seconds_by_polling_alone(pool: PgPool) {
        let no_listen = WatcherOptions {
            listen: false,
            ..WatcherOptions::default()
        };
        let watcher = PhaseWatcher::start_with(pool.clone(), no_listen)
            .await
            .unwrap();
        let mut rx = watcher.subscribe();
        start_in(&pool, Phase::DualWritePostgresRead).await;
        let changed = Instant::now();
        assert!(
            seen(&mut rx, SEEN_WITHIN, |s| s.domain
                == Phase::DualWritePostgresRead)
            .await
        );
        assert!(changed.elapsed() < SEEN_WITHIN);
        assert_eq!(
            watcher_connections(&pool).await,
            1,
            "no listener connection"
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn the_watcher_keeps_the_last_phase_while_postgres_is_unreachable_and_catches_up(
        pool: PgPool,
    ) {
        let watcher = PhaseWatcher::start_with(
            pool.clone(),
            WatcherOptions {
                poll: Duration::from_millis(200),
                query_timeout: Duration::from_secs(1),
                ..WatcherOptions::default()
            },
        )
        .await
        .unwrap();
        let mut rx = watcher.subscribe();
        until_connections(&pool, 2).await;

        // make the database unreachable for the watcher: no new connections, its own ended;
        // this test's connection stays open to change the phase meanwhile
        let mut admin = pool.acquire().await.unwrap();
        let db: String = sqlx::query_scalar("select current_database()")
            .fetch_one(&mut *admin)
            .await
            .unwrap();
        let allow = |on: bool| format!("alter database \"{db}\" with allow_connections {on}");
        // a database's own sessions may not close it: alter it from the maintenance database
        let server = std::env::var("DATABASE_URL").unwrap();
        let mut maintenance = sqlx::PgConnection::connect(&server).await.unwrap();
        sqlx::query(AssertSqlSafe(allow(false)))
            .execute(&mut maintenance)
            .await
            .unwrap();
        sqlx::query(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = current_database() and application_name = $1",
        )
        .bind(WATCHER_APPLICATION_NAME)
        .execute(&mut *admin)
        .await
        .unwrap();
        sqlx::query("update migration.phase_state set phase = 'dual-write-cosmos-read'")
            .execute(&mut *admin)
            .await
            .unwrap();

        // several poll periods pass; the watcher cannot read, and keeps what it knew
        let unchanged = !seen(&mut rx, Duration::from_secs(1), |s| {
            s.domain != Phase::CosmosOnly
        })
        .await;
        assert!(unchanged, "the watcher cannot have read the new phase");
        assert_eq!(watcher.domain_phase(), Phase::CosmosOnly);

        sqlx::query(AssertSqlSafe(allow(true)))
            .execute(&mut maintenance)
            .await
            .unwrap();
        assert!(
            seen(&mut rx, SEEN_WITHIN, |s| s.domain
                == Phase::DualWriteCosmosRead)
            .await
        );
        drop(admin);

        // and the listener reconnects: a later change arrives by NOTIFY again
        until_connections(&pool, 2).await;
        start_in(&pool, Phase::DualWritePostgresRead).await;
        assert!(
            seen(&mut rx, SEEN_WITHIN, |s| s.domain
                == Phase::DualWritePostgresRead)
            .await
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn dropping_the_last_clone_stops_the_watcher(pool: PgPool) {
        let watcher = PhaseWatcher::start(pool.clone(), Duration::from_millis(100))
            .await
            .unwrap();
        until_connections(&pool, 2).await;
        let rx = watcher.subscribe();
        let clone = watcher.clone();
        drop(watcher);
        start_in(&pool, Phase::DualWriteCosmosRead).await;
        let mut rx2 = clone.subscribe();
        assert!(
            seen(&mut rx2, SEEN_WITHIN, |s| s.domain
                == Phase::DualWriteCosmosRead)
            .await
        );
        drop(clone);
        until_connections(&pool, 0).await;
        // subscribers learn that no more changes will come
        let mut rx = rx;
        rx.mark_unchanged();
        assert!(timeout(SEEN_WITHIN, rx.changed()).await.unwrap().is_err());
    }

    #[test]
    fn the_watcher_is_shareable_across_tasks() {
        fn shareable<T: Clone + Send + Sync + std::fmt::Debug + 'static>() {}
        shareable::<PhaseWatcher>();
    }
}
