//! The phase data access against a real, freshly migrated database per test: a change writes
//! the state and exactly one audit row in one transaction, a refusing gate writes nothing,
//! concurrent changes are serialized by the state-row lock, overrides are set and cleared with
//! their audit, a domain move clears (or keeps, audited) the overrides it leaves on the wrong
//! side, a dry run and a move that waits for confirmation write nothing, and the gate facts
//! read what the runs (per verify direction), transitions, accounts, journal and outbox hold.
#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use mystira_domain::RepoError;
use mystira_domain::phase::Phase;
use mystira_postgres::phase::{
    self, AffectedOverride, ChangeFlags, ChangeOutcome, ChangeRequest, GateRequest, OverrideAction,
    PhaseGate, Ungated, VerifyDirection,
};
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
        request: &GateRequest,
    ) -> Result<Vec<String>, RepoError> {
        Ok(request
            .moves()
            .map(|m| format!("{}->{} {:?}", m.from, m.to, m.account))
            .collect())
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
        ..
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
    let ChangeOutcome::Refused {
        from, to, unmet, ..
    } = outcome
    else {
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
        ..
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

/// Sets overrides without a gate (test setup).
async fn overrides_at(pool: &PgPool, overrides: &[(Uuid, Phase)]) {
    for (account, p) in overrides {
        phase::set_override(pool, *account, *p, by("setup", "canary"), &Ungated)
            .await
            .unwrap();
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_domain_move_clears_the_overrides_it_leaves_on_the_wrong_side_each_audited(pool: PgPool) {
    phase::set_phase(
        &pool,
        Phase::DualWritePostgresRead,
        by("setup", "s"),
        &Ungated,
    )
    .await
    .unwrap();
    let (ahead, same_after, behind) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    overrides_at(
        &pool,
        &[
            (ahead, Phase::PostgresOnly),
            (same_after, Phase::DualWriteCosmosRead),
            (behind, Phase::CosmosOnly),
        ],
    )
    .await;
    let before = transitions(&pool).await;

    // the gate is asked about the domain's move and the cleared account's, together
    let outcome = phase::set_phase(
        &pool,
        Phase::DualWriteCosmosRead,
        by("ada", "roll back"),
        &RefuseAll,
    )
    .await
    .unwrap();
    let ChangeOutcome::Refused {
        unmet, overrides, ..
    } = outcome
    else {
        panic!("expected refused, got {outcome:?}");
    };
    assert_eq!(
        unmet,
        vec![
            "dual-write-postgres-read->dual-write-cosmos-read None".to_owned(),
            format!("postgres-only->dual-write-cosmos-read Some({ahead})"),
        ]
    );
    assert_eq!(
        overrides,
        vec![AffectedOverride {
            account_id: ahead,
            phase: Phase::PostgresOnly,
            action: OverrideAction::Cleared,
        }]
    );
    assert_eq!(transitions(&pool).await, before, "refused: nothing written");

    let outcome = phase::set_phase(
        &pool,
        Phase::DualWriteCosmosRead,
        by("ada", "roll back"),
        &Ungated,
    )
    .await
    .unwrap();
    let ChangeOutcome::Applied {
        transition,
        overrides,
        ..
    } = outcome
    else {
        panic!("expected applied, got {outcome:?}");
    };
    assert_eq!(overrides.len(), 1);
    assert_eq!(transition.overrides_cleared, vec![ahead]);
    assert!(transition.overrides_kept.is_empty());
    let now = phase::overrides(&pool).await.unwrap();
    assert_eq!(now.get(&ahead), None, "the override ahead was cleared");
    assert_eq!(now.get(&same_after), Some(&Phase::DualWriteCosmosRead));
    assert_eq!(now.get(&behind), Some(&Phase::CosmosOnly));
    // one row for the domain, one for the cleared account (its own move)
    let history = phase::history(&pool, 2).await.unwrap();
    assert_eq!(transitions(&pool).await, before + 2);
    let account_row = history
        .iter()
        .find(|t| t.account_id == Some(ahead))
        .unwrap();
    assert_eq!(
        (account_row.from_phase, account_row.to_phase),
        (Phase::PostgresOnly, Phase::DualWriteCosmosRead)
    );
    assert!(
        account_row.reason.contains("roll back"),
        "{}",
        account_row.reason
    );

    // keeping them: nothing cleared, the domain's row lists them as kept
    let outcome = phase::set_phase_with(
        &pool,
        Phase::PostgresOnly,
        by("ada", "forward"),
        ChangeFlags {
            keep_overrides: true,
            ..ChangeFlags::default()
        },
        &Ungated,
    )
    .await
    .unwrap();
    let ChangeOutcome::Applied {
        transition,
        overrides,
        ..
    } = outcome
    else {
        panic!("expected applied, got {outcome:?}");
    };
    let mut kept = transition.overrides_kept.clone();
    kept.sort();
    let mut expected = vec![same_after, behind];
    expected.sort();
    assert_eq!(kept, expected);
    assert!(overrides.iter().all(|o| o.action == OverrideAction::Kept));
    assert_eq!(phase::overrides(&pool).await.unwrap().len(), 2);
    assert_eq!(transitions(&pool).await, before + 3);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_dry_run_decides_under_the_lock_and_writes_nothing(pool: PgPool) {
    let canary = Uuid::new_v4();
    overrides_at(&pool, &[(canary, Phase::CosmosOnly)]).await;
    let dry = ChangeFlags {
        dry_run: true,
        ..ChangeFlags::default()
    };
    let outcome = phase::set_phase_with(
        &pool,
        Phase::DualWritePostgresRead,
        by("ada", "try"),
        dry,
        &RefuseAll,
    )
    .await
    .unwrap();
    let ChangeOutcome::DryRun {
        from,
        to,
        unmet,
        overrides,
        needs_confirmation,
    } = outcome
    else {
        panic!("expected a dry run, got {outcome:?}");
    };
    assert_eq!(
        (from, to),
        (Phase::CosmosOnly, Phase::DualWritePostgresRead)
    );
    assert_eq!(unmet.len(), 2, "the domain's move and the cleared canary's");
    assert_eq!(overrides[0].account_id, canary);
    assert!(!needs_confirmation);
    assert_eq!(transitions(&pool).await, 1, "only the setup's override row");
    assert_eq!(
        phase::current(&pool).await.unwrap().phase,
        Phase::CosmosOnly
    );
    assert_eq!(phase::overrides(&pool).await.unwrap().len(), 1);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_move_out_of_postgres_only_waits_for_confirmation_after_the_gate(pool: PgPool) {
    phase::set_phase(&pool, Phase::PostgresOnly, by("setup", "s"), &Ungated)
        .await
        .unwrap();
    let confirm = ChangeFlags {
        require_confirmation: true,
        ..ChangeFlags::default()
    };
    // a refusing gate answers first: nobody is asked to confirm a move that cannot happen
    let outcome = phase::set_phase_with(
        &pool,
        Phase::DualWritePostgresRead,
        by("ada", "back"),
        confirm,
        &RefuseAll,
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, ChangeOutcome::Refused { .. }),
        "{outcome:?}"
    );
    let outcome = phase::set_phase_with(
        &pool,
        Phase::DualWritePostgresRead,
        by("ada", "back"),
        confirm,
        &Ungated,
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, ChangeOutcome::NeedsConfirmation { .. }),
        "{outcome:?}"
    );
    assert_eq!(transitions(&pool).await, 1);
    assert_eq!(
        phase::current(&pool).await.unwrap().phase,
        Phase::PostgresOnly
    );
    // a canary leaving postgres-only is asked too; one moving within it is not
    let canary = Uuid::new_v4();
    let outcome = phase::set_override_with(
        &pool,
        canary,
        Phase::CosmosOnly,
        by("ada", "c"),
        confirm,
        &Ungated,
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, ChangeOutcome::NeedsConfirmation { .. }),
        "{outcome:?}"
    );
    let outcome = phase::set_override_with(
        &pool,
        canary,
        Phase::PostgresOnly,
        by("ada", "pin"),
        confirm,
        &Ungated,
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, ChangeOutcome::Applied { .. }),
        "{outcome:?}"
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn verify_facts_tell_the_directions_apart_and_phase_3_exits_are_found(pool: PgPool) {
    sqlx::query(
        "insert into migration.runs (job, source, started_at, finished_at, status, counts, scope)
         values
           -- recorded before runs named their direction: Cosmos to PostgreSQL
           ('verify', 's', now() - interval '5 h', now() - interval '5 h', 'succeeded',
            '{\"outcome\": \"clean\"}', '{}'),
           ('verify', 's', now() - interval '3 h', now() - interval '170 m', 'succeeded',
            '{\"outcome\": \"clean\"}', '{\"direction\": \"pg-to-cosmos\"}'),
           ('verify', 's', now() - interval '1 h', now() - interval '1 h', 'failed',
            '{\"outcome\": \"drift\"}', '{\"direction\": \"pg-to-cosmos\"}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let c2p = phase::verify_facts(&pool).await.unwrap();
    let p2c = phase::verify_facts_for(&pool, VerifyDirection::PgToCosmos, None)
        .await
        .unwrap();
    assert!(
        c2p.latest_clean.is_some() && c2p.latest_drift.is_none(),
        "{c2p:?}"
    );
    assert!(p2c.latest_clean.unwrap() > c2p.latest_clean.unwrap());
    assert!(p2c.latest_drift.unwrap() > p2c.latest_clean.unwrap());
    assert!(p2c.latest_clean_started.unwrap() < p2c.latest_clean.unwrap());
    // only clean runs started since a time count
    let since = p2c.latest_clean_started.unwrap() + chrono::Duration::seconds(1);
    let later = phase::verify_facts_for(&pool, VerifyDirection::PgToCosmos, Some(since))
        .await
        .unwrap();
    assert_eq!(later.latest_clean, None);
    assert_eq!(later.latest_drift, p2c.latest_drift);

    assert_eq!(phase::left_postgres_only_at(&pool).await.unwrap(), None);
    let canary = Uuid::new_v4();
    overrides_at(&pool, &[(canary, Phase::PostgresOnly)]).await;
    assert_eq!(phase::left_postgres_only_at(&pool).await.unwrap(), None);
    phase::clear_override(&pool, canary, by("ada", "done"), &Ungated)
        .await
        .unwrap();
    let left = phase::left_postgres_only_at(&pool).await.unwrap();
    assert_eq!(
        left,
        Some(phase::history(&pool, 1).await.unwrap()[0].changed_at)
    );

    assert!(!phase::account_exists(&pool, canary).await.unwrap());
    sqlx::query("insert into accounts (id, email) values ($1, 'a@example.com')")
        .bind(canary)
        .execute(&pool)
        .await
        .unwrap();
    assert!(phase::account_exists(&pool, canary).await.unwrap());
}
