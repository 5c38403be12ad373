//! The phase data access against a real, freshly migrated database per test: a change writes
//! the state and exactly one audit row in one transaction, a refusing gate writes nothing,
//! concurrent changes are serialized by the state-row lock, overrides are set and cleared with
//! their audit, and the gate facts read what the runs, journal and outbox tables hold.
#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use mystira_domain::RepoError;
use mystira_postgres::phase::{self, ChangeOutcome, ChangeRequest, Phase, PhaseGate, Ungated};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

fn by(actor: &'static str, reason: &'static str) -> ChangeRequest<'static> {
    ChangeRequest {
        actor,
        reason,
        force: false,
    }
}

/// Refuses every change, naming what it saw (so the test can check it ran inside the change).
struct RefuseAll;

#[async_trait]
impl PhaseGate for RefuseAll {
    type Unmet = String;

    async fn unmet(
        &self,
        _conn: &mut PgConnection,
        from: Phase,
        to: Phase,
        account: Option<Uuid>,
    ) -> Result<Vec<String>, RepoError> {
        Ok(vec![format!("{from}->{to} {account:?}")])
    }
}

async fn transitions(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from migration.phase_transitions")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn set_phase_writes_the_state_and_one_audit_row(pool: PgPool) {
    let before = phase::current(&pool).await.unwrap();
    assert_eq!(before.phase, Phase::CosmosOnly);
    let outcome = phase::set_phase(
        &pool,
        Phase::DualWriteCosmosRead,
        by("ada", "backfill done"),
        &Ungated,
    )
    .await
    .unwrap();
    let ChangeOutcome::Applied {
        transition,
        overridden,
    } = outcome
    else {
        panic!("expected applied, got {outcome:?}");
    };
    assert!(overridden.is_empty());
    assert_eq!(transition.from_phase, Phase::CosmosOnly);
    assert_eq!(transition.to_phase, Phase::DualWriteCosmosRead);
    assert_eq!(transition.changed_by, "ada");
    assert_eq!(transition.reason, "backfill done");
    assert!(!transition.forced);
    assert_eq!(transition.account_id, None);

    let after = phase::current(&pool).await.unwrap();
    assert_eq!(after.phase, Phase::DualWriteCosmosRead);
    assert_eq!(after.changed_by, "ada");
    assert_eq!(after.reason, "backfill done");
    assert_eq!(after.changed_at, transition.changed_at);
    assert_eq!(phase::history(&pool, 10).await.unwrap(), vec![transition]);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn setting_the_current_phase_again_writes_nothing(pool: PgPool) {
    let outcome = phase::set_phase(&pool, Phase::CosmosOnly, by("ada", "noop"), &RefuseAll)
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        ChangeOutcome::Unchanged {
            phase: Phase::CosmosOnly
        }
    ));
    assert_eq!(transitions(&pool).await, 0);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_refusing_gate_writes_nothing_and_force_goes_past_it_audited_as_forced(pool: PgPool) {
    let outcome = phase::set_phase(&pool, Phase::PostgresOnly, by("ada", "try"), &RefuseAll)
        .await
        .unwrap();
    let ChangeOutcome::Refused { from, to, unmet } = outcome else {
        panic!("expected refused, got {outcome:?}");
    };
    assert_eq!((from, to), (Phase::CosmosOnly, Phase::PostgresOnly));
    assert_eq!(unmet, vec!["cosmos-only->postgres-only None".to_owned()]);
    assert_eq!(
        phase::current(&pool).await.unwrap().phase,
        Phase::CosmosOnly
    );
    assert_eq!(transitions(&pool).await, 0);

    let forced = ChangeRequest {
        force: true,
        ..by("ada", "incident 42")
    };
    let outcome = phase::set_phase(&pool, Phase::PostgresOnly, forced, &RefuseAll)
        .await
        .unwrap();
    let ChangeOutcome::Applied {
        transition,
        overridden,
    } = outcome
    else {
        panic!("expected applied, got {outcome:?}");
    };
    assert!(transition.forced);
    assert_eq!(overridden.len(), 1);
    assert_eq!(
        phase::current(&pool).await.unwrap().phase,
        Phase::PostgresOnly
    );
    assert!(phase::history(&pool, 1).await.unwrap()[0].forced);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn force_through_an_open_gate_is_not_recorded_as_forced(pool: PgPool) {
    let request = ChangeRequest {
        force: true,
        ..by("ada", "belt and braces")
    };
    let outcome = phase::set_phase(&pool, Phase::DualWriteCosmosRead, request, &Ungated)
        .await
        .unwrap();
    let ChangeOutcome::Applied { transition, .. } = outcome else {
        panic!("expected applied, got {outcome:?}");
    };
    assert!(!transition.forced);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn overrides_are_set_from_the_accounts_phase_and_cleared_back_to_the_domain(pool: PgPool) {
    let canary = Uuid::new_v4();
    // the gate sees the account's current phase (the domain's, before any override)
    let outcome = phase::set_override(
        &pool,
        canary,
        Phase::DualWritePostgresRead,
        by("ada", "canary"),
        &RefuseAll,
    )
    .await
    .unwrap();
    let ChangeOutcome::Refused { unmet, .. } = outcome else {
        panic!("expected refused, got {outcome:?}");
    };
    assert_eq!(
        unmet,
        vec![format!(
            "cosmos-only->dual-write-postgres-read Some({canary})"
        )]
    );

    let outcome = phase::set_override(
        &pool,
        canary,
        Phase::DualWritePostgresRead,
        by("ada", "canary"),
        &Ungated,
    )
    .await
    .unwrap();
    let ChangeOutcome::Applied { transition, .. } = outcome else {
        panic!("expected applied, got {outcome:?}");
    };
    assert_eq!(transition.account_id, Some(canary));
    assert_eq!(transition.from_phase, Phase::CosmosOnly);
    let overrides = phase::overrides(&pool).await.unwrap();
    assert_eq!(overrides.get(&canary), Some(&Phase::DualWritePostgresRead));
    // the domain phase did not move
    assert_eq!(
        phase::current(&pool).await.unwrap().phase,
        Phase::CosmosOnly
    );
    let details = phase::override_details(&pool).await.unwrap();
    assert_eq!(details.len(), 1);
    assert_eq!(details[0].changed_by, "ada");

    // moving the override again starts from the override's phase
    let outcome = phase::set_override(
        &pool,
        canary,
        Phase::DualWriteCosmosRead,
        by("bob", "back"),
        &Ungated,
    )
    .await
    .unwrap();
    let ChangeOutcome::Applied { transition, .. } = outcome else {
        panic!("expected applied, got {outcome:?}");
    };
    assert_eq!(transition.from_phase, Phase::DualWritePostgresRead);

    let outcome = phase::clear_override(&pool, canary, by("bob", "done"), &Ungated)
        .await
        .unwrap();
    let ChangeOutcome::Applied { transition, .. } = outcome else {
        panic!("expected applied, got {outcome:?}");
    };
    assert_eq!(
        (transition.from_phase, transition.to_phase),
        (Phase::DualWriteCosmosRead, Phase::CosmosOnly)
    );
    assert_eq!(transition.account_id, Some(canary));
    assert!(phase::overrides(&pool).await.unwrap().is_empty());

    let outcome = phase::clear_override(&pool, canary, by("bob", "again"), &Ungated)
        .await
        .unwrap();
    assert!(matches!(outcome, ChangeOutcome::NoOverride { .. }));
    assert_eq!(transitions(&pool).await, 3);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn concurrent_changes_are_serialized_and_every_one_is_audited(pool: PgPool) {
    // 16 changes race, alternating between two phases; with the lock, each one reads the phase
    // the previous one wrote, so the audit rows form one unbroken chain
    let targets = [Phase::DualWriteCosmosRead, Phase::DualWritePostgresRead];
    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let pool = pool.clone();
            tokio::spawn(async move {
                phase::set_phase(&pool, targets[n % 2], by("racer", "race"), &Ungated)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        if let ChangeOutcome::Applied { .. } = task.await.unwrap() {
            applied += 1;
        }
    }
    let mut history = phase::history(&pool, 100).await.unwrap();
    history.reverse();
    assert_eq!(history.len(), applied, "one audit row per applied change");
    let mut expected_from = Phase::CosmosOnly;
    for t in &history {
        assert_eq!(t.from_phase, expected_from, "audit chain broken at {t:?}");
        assert_ne!(t.from_phase, t.to_phase);
        expected_from = t.to_phase;
    }
    assert_eq!(phase::current(&pool).await.unwrap().phase, expected_from);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn load_all_reads_the_phase_and_every_override_together(pool: PgPool) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for (account, p) in [(a, Phase::DualWriteCosmosRead), (b, Phase::PostgresOnly)] {
        phase::set_override(&pool, account, p, by("ada", "canary"), &Ungated)
            .await
            .unwrap();
    }
    let (state, overrides) = phase::load_all(&pool).await.unwrap();
    assert_eq!(state.phase, Phase::CosmosOnly);
    assert_eq!(overrides.len(), 2);
    assert_eq!(overrides[&a], Phase::DualWriteCosmosRead);
    assert_eq!(overrides[&b], Phase::PostgresOnly);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn gate_facts_read_runs_journal_and_outbox(pool: PgPool) {
    assert_eq!(phase::latest_run(&pool, "backfill").await.unwrap(), None);
    let facts = phase::verify_facts(&pool).await.unwrap();
    assert_eq!((facts.latest_clean, facts.latest_drift), (None, None));
    assert_eq!(phase::retry_journal_len(&pool).await.unwrap(), 0);
    assert_eq!(phase::outbox_backlog(&pool).await.unwrap().rows, 0);

    sqlx::query(
        "insert into migration.runs (job, source, started_at, finished_at, status, counts, scope)
         values ('backfill', 's', now() - interval '2 h', now() - interval '1 h', 'succeeded', '{}', '{}'),
                ('backfill', 's', now() - interval '10 m', null, 'running', '{}', '{}'),
                ('verify', 's', now() - interval '3 h', now() - interval '3 h', 'succeeded',
                 '{\"outcome\": \"clean\"}', '{\"first_bucket\": 0, \"last_bucket\": 255}'),
                -- a clean slice proves nothing about the rest of the key space
                ('verify', 's', now() - interval '1 h', now() - interval '1 h', 'succeeded',
                 '{\"outcome\": \"clean\"}', '{\"first_bucket\": 0, \"last_bucket\": 127}'),
                ('verify', 's', now() - interval '2 h', now() - interval '2 h', 'failed',
                 '{\"outcome\": \"drift\"}', '{}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into migration.retry_journal (container, document_id, op) values ('Accounts', 'x', 'delete')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into migration.outbox (container, key, enqueued_at)
         values ('Accounts', gen_random_uuid(), now() - interval '5 m'),
                ('UserProfiles', gen_random_uuid(), now())",
    )
    .execute(&pool)
    .await
    .unwrap();

    let latest = phase::latest_run(&pool, "backfill").await.unwrap().unwrap();
    assert_eq!(latest.status, "running");
    let facts = phase::verify_facts(&pool).await.unwrap();
    let (clean, drift) = (facts.latest_clean.unwrap(), facts.latest_drift.unwrap());
    assert!(drift > clean, "the slice is not the latest clean verify");
    assert_eq!(phase::retry_journal_len(&pool).await.unwrap(), 1);
    let outbox = phase::outbox_backlog(&pool).await.unwrap();
    assert_eq!(outbox.rows, 2);
    let oldest_age = chrono::Utc::now() - outbox.oldest.unwrap();
    assert!(oldest_age >= chrono::Duration::minutes(4), "{oldest_age}");
}
