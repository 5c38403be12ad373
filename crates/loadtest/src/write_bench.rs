//! The write-path benchmark: what the dual write costs a caller, per phase, against phase 0
//! (Cosmos only) measured in the same run, and how fast the relay empties the outbox.
//!
//! Every phase runs the same mix of user-domain writes (account create and update, login,
//! subscription, profile create and edit, badge, completed scenario), one call at a time, so
//! each figure is a latency, not a throughput under contention. Phases are interleaved within
//! each run (0, 1, 2, 0, 1, 2, ...) so that drift of the machine over time does not favour one
//! of them, and each run starts with a warm-up of every phase. A PostgreSQL round trip
//! (`select 1` on the same pool) is measured the same way: the target is that phases 1 and 2
//! add at most one such round trip at p99 over phase 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use mystira_cosmos_store::CosmosRepositories;
use mystira_domain::phase::Phase;
use mystira_domain::ports::{
    AccountRepository, BadgeRepository, CompletedScenarioRepository, ProfileRepository, RepoResult,
    SubscriptionRepository,
};
use mystira_domain::{
    Account, AccountSettings, AgeGroup, Email, RepoError, Role, Subscription, SubscriptionType,
    UserBadge, UserProfile,
};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use mystira_dual_write::journal::FileJournal;
use mystira_dual_write::relay::RelayConfig;
use mystira_dual_write::router::{
    DualWriteRouter, FixedPhase, Phase1Copy, Phase2Delivery, RouterConfig,
};

/// How much to measure.
#[derive(Debug, Clone)]
pub struct WriteBenchConfig {
    /// Write calls per phase and run (after the warm-up).
    pub calls: usize,
    pub runs: usize,
    /// Aggregates put in the outbox for the relay measure.
    pub relay_aggregates: usize,
}

/// Latency percentiles of one measure, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One measure over the runs: the median of the runs and the spread (lowest and highest run).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Spread {
    pub median: Latency,
    pub min: Latency,
    pub max: Latency,
    pub runs: Vec<Latency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseLatency {
    pub phase: Phase,
    /// How the second store was written: `inline` (in the call) or in the background
    /// (phase 1: through the journal; phase 2: by the relay); `None` for phase 0.
    pub mode: Option<&'static str>,
    pub latency: Spread,
    /// p99 over phase 0's p99, in PostgreSQL round trips at p99 (medians of the runs).
    pub added_p99_round_trips: f64,
    /// p50 and p99 over phase 0's, in committed single-row PostgreSQL writes (the unit a write
    /// path is charged in: a round trip that also waits for the WAL flush).
    pub added_p50_write_round_trips: f64,
    pub added_p99_write_round_trips: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteBenchReport {
    pub calls_per_phase: usize,
    pub runs: usize,
    pub postgres_round_trip: Spread,
    /// A committed single-row upsert, one call at a time.
    pub postgres_write_round_trip: Spread,
    pub phases: Vec<PhaseLatency>,
    /// Aggregates delivered per second by one relay (default concurrency), per run.
    pub relay_aggregates_per_second: Vec<f64>,
    pub relay_aggregates: usize,
    /// Documents read from the change feed and written into an emptied PostgreSQL per second
    /// by one `replicate --once` (default settings), per run.
    pub replicate_documents_per_second: Vec<f64>,
    pub replicate_documents: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn latency(mut samples: Vec<Duration>) -> Latency {
    samples.sort_unstable();
    Latency {
        p50_ms: percentile(&samples, 0.50),
        p99_ms: percentile(&samples, 0.99),
    }
}

fn spread(runs: Vec<Latency>) -> Spread {
    let pick = |f: fn(&Latency) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (
            v.first().copied().unwrap_or(0.0),
            v.get(v.len() / 2).copied().unwrap_or(0.0),
            v.last().copied().unwrap_or(0.0),
        )
    };
    let (p50_min, p50_med, p50_max) = pick(|l| l.p50_ms);
    let (p99_min, p99_med, p99_max) = pick(|l| l.p99_ms);
    Spread {
        median: Latency {
            p50_ms: p50_med,
            p99_ms: p99_med,
        },
        min: Latency {
            p50_ms: p50_min,
            p99_ms: p99_min,
        },
        max: Latency {
            p50_ms: p50_max,
            p99_ms: p99_max,
        },
        runs,
    }
}

fn account(n: usize) -> Account {
    let at = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    Account {
        id: Uuid::new_v4(),
        cosmos_id: None,
        auth0_user_id: Some(format!("auth0|{}", Uuid::new_v4().simple())),
        email: Email::parse(&format!("bench{n}-{}@example.org", Uuid::new_v4().simple()))
            .unwrap_or_else(|_| unreachable!("a generated address is valid")),
        display_name: format!("Bench {n}"),
        role: Role::User,
        settings: AccountSettings::default(),
        created_at: at,
        last_login_at: at,
    }
}

/// One call of the mix, the `n`th of its run, on `router`. Calls build on what earlier calls
/// of the same run created (`state`).
async fn call(
    router: &DualWriteRouter,
    n: usize,
    state: &mut Vec<(Account, Uuid)>,
) -> RepoResult<()> {
    let now = Utc::now();
    match (n % 7, state.last().cloned()) {
        (0, _) | (_, None) => {
            let a = account(n);
            AccountRepository::create(router, &a).await?;
            let profile = UserProfile {
                id: Uuid::new_v4(),
                cosmos_id: None,
                account_id: Some(a.id),
                name: "Bench".to_owned(),
                age_group: AgeGroup::parse("6-9").map_err(RepoError::Invalid)?,
                date_of_birth: None,
                is_guest: false,
                is_npc: false,
                pronouns: None,
                bio: None,
                avatar_media_id: None,
                selected_avatar_media_id: None,
                preferred_themes: vec!["Classic Fantasy".to_owned()],
                has_completed_onboarding: false,
                created_at: now,
                updated_at: now,
            };
            ProfileRepository::create(router, &profile).await?;
            state.push((a, profile.id));
        }
        (1, Some((a, _))) => {
            let renamed = Account {
                display_name: format!("Bench {n} renamed"),
                ..a
            };
            AccountRepository::update(router, &renamed).await?;
        }
        (2, Some((a, _))) => {
            AccountRepository::record_login(router, a.id, now).await?;
        }
        (3, Some((a, _))) => {
            let s = Subscription {
                id: Uuid::new_v4(),
                cosmos_id: None,
                account_id: a.id,
                subscription_type: SubscriptionType::Monthly,
                product_id: Some("monthly".to_owned()),
                tier: "Plus".to_owned(),
                is_active: true,
                valid_until: None,
                start_date: Some(now),
                end_date: None,
                purchase_token: None,
                last_verified: None,
                purchased_scenarios: Vec::new(),
                created_at: now,
                updated_at: now,
            };
            SubscriptionRepository::upsert_for_account(router, &s).await?;
        }
        (4, Some((_, profile))) => {
            ProfileRepository::mark_onboarded(router, profile).await?;
        }
        (5, Some((_, profile))) => {
            let badge = UserBadge {
                id: Uuid::new_v4(),
                cosmos_id: None,
                user_profile_id: profile,
                badge_configuration_id: format!("config-{n}"),
                badge_id: None,
                badge_name: "Brave".to_owned(),
                badge_message: String::new(),
                axis: "courage".to_owned(),
                trigger_value: 1.0,
                threshold: 0.5,
                earned_at: now,
                game_session_id: None,
                scenario_id: None,
                image_id: String::new(),
            };
            BadgeRepository::award(router, &badge).await?;
        }
        (_, Some((a, _))) => {
            CompletedScenarioRepository::mark_completed(
                router,
                a.id,
                &format!("scenario-{n}"),
                now,
            )
            .await?;
        }
    }
    Ok(())
}

/// Runs `calls` calls of the mix and returns each call's latency.
async fn measure(router: &DualWriteRouter, calls: usize) -> RepoResult<Vec<Duration>> {
    let mut state = Vec::new();
    let mut samples = Vec::with_capacity(calls);
    for n in 0..calls {
        let started = Instant::now();
        call(router, n, &mut state).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// `calls` executions of `statement`, one at a time, timed each.
async fn round_trips(
    pool: &PgPool,
    statement: &'static str,
    calls: usize,
) -> RepoResult<Vec<Duration>> {
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        sqlx::query(statement)
            .execute(pool)
            .await
            .map_err(|e| mystira_postgres::map_sqlx_error("bench", e))?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

const READ_ROUND_TRIP: &str = "select 1";
/// A committed one-row write in the benchmark's own database.
const WRITE_ROUND_TRIP: &str = "insert into migration.checkpoints (job, unit, position) \
     values ('bench-writes', 'round-trip', '{}') \
     on conflict (job, unit) do update set updated_at = now()";

/// Runs the benchmark on an empty, migrated database and a Cosmos database with the app's
/// containers.
pub async fn run_write_bench(
    pool: &PgPool,
    store: &mystira_cosmos_store::CosmosStore,
    cosmos: &CosmosRepositories,
    journal_dir: &std::path::Path,
    config: &WriteBenchConfig,
) -> Result<WriteBenchReport, RepoError> {
    let files = FileJournal::open(journal_dir).map_err(|e| RepoError::Store(e.to_string()))?;
    let inline = RouterConfig::default();
    let background = RouterConfig {
        phase1_copy: Phase1Copy::Journal,
        phase2_delivery: Phase2Delivery::Background,
        ..RouterConfig::default()
    };
    let phases = [
        (Phase::CosmosOnly, None, inline.clone()),
        (Phase::DualWriteCosmosRead, Some("inline"), inline.clone()),
        (
            Phase::DualWriteCosmosRead,
            Some("journal"),
            background.clone(),
        ),
        (Phase::DualWritePostgresRead, Some("inline"), inline),
        (Phase::DualWritePostgresRead, Some("relay"), background),
    ];
    let routers: Vec<DualWriteRouter> = phases
        .iter()
        .map(|(p, _, config)| {
            DualWriteRouter::new(
                pool.clone(),
                cosmos.clone(),
                Arc::new(FixedPhase(*p)),
                files.clone(),
                config.clone(),
            )
        })
        .collect();
    let warm_up = (config.calls / 10).max(7);
    let mut per_phase: Vec<Vec<Latency>> = vec![Vec::new(); phases.len()];
    let (mut pg, mut pg_write) = (Vec::new(), Vec::new());
    for _ in 0..config.runs.max(1) {
        for router in &routers {
            measure(router, warm_up).await?;
        }
        pg.push(latency(
            round_trips(pool, READ_ROUND_TRIP, config.calls).await?,
        ));
        pg_write.push(latency(
            round_trips(pool, WRITE_ROUND_TRIP, config.calls).await?,
        ));
        for (i, router) in routers.iter().enumerate() {
            per_phase[i].push(latency(measure(router, config.calls).await?));
        }
    }
    let postgres_round_trip = spread(pg);
    let postgres_write_round_trip = spread(pg_write);
    let base = spread(per_phase[0].clone()).median;
    let base_p99 = base.p99_ms;
    let write_rt = postgres_write_round_trip.median;
    let phases_out = phases
        .iter()
        .zip(per_phase)
        .map(|((phase, mode, _), runs)| {
            let latency = spread(runs);
            let added =
                (latency.median.p99_ms - base_p99) / postgres_round_trip.median.p99_ms.max(1e-9);
            let added_p50_write_round_trips =
                (latency.median.p50_ms - base.p50_ms) / write_rt.p50_ms.max(1e-9);
            let added_p99_write_round_trips =
                (latency.median.p99_ms - base.p99_ms) / write_rt.p99_ms.max(1e-9);
            PhaseLatency {
                phase: *phase,
                mode: *mode,
                latency,
                added_p99_round_trips: added,
                added_p50_write_round_trips,
                added_p99_write_round_trips,
            }
        })
        .collect();

    let mut relay_rates = Vec::new();
    let repo = mystira_postgres::PgAccountRepository::new(pool.clone());
    // what the background modes left in the journal and the outbox, out of the timed measure
    mystira_dual_write::journal::replay_table(pool, 1000, Some(&cosmos.writer))
        .await
        .map_err(|e| RepoError::Store(e.to_string()))?;
    drain(pool, cosmos).await?;
    for _ in 0..config.runs.max(1) {
        for n in 0..config.relay_aggregates {
            repo.create(&account(n)).await?;
        }
        let started = Instant::now();
        drain(pool, cosmos).await?;
        relay_rates.push(config.relay_aggregates as f64 / started.elapsed().as_secs_f64());
    }
    let (replicate_documents_per_second, replicate_documents) =
        replicate_rates(pool, store, config.runs.max(1)).await?;
    Ok(WriteBenchReport {
        replicate_documents_per_second,
        replicate_documents,
        calls_per_phase: config.calls,
        runs: config.runs.max(1),
        postgres_round_trip,
        postgres_write_round_trip,
        phases: phases_out,
        relay_aggregates_per_second: relay_rates,
        relay_aggregates: config.relay_aggregates,
    })
}

/// Relay passes until the outbox is empty (bounded, so a benchmark never hangs).
async fn drain(pool: &PgPool, cosmos: &CosmosRepositories) -> Result<(), RepoError> {
    let (_, left) = mystira_dual_write::relay::drain(
        pool,
        &cosmos.writer,
        &RelayConfig::default(),
        Duration::from_secs(600),
    )
    .await?;
    if left.rows > 0 {
        return Err(RepoError::Unavailable(format!(
            "the outbox still holds {} rows after 10 minutes",
            left.rows
        )));
    }
    Ok(())
}

/// `replicate --once` from the beginning of the feed into emptied domain tables, timed, `runs`
/// times; returns the rates and the documents written per run.
async fn replicate_rates(
    pool: &PgPool,
    store: &mystira_cosmos_store::CosmosStore,
    runs: usize,
) -> Result<(Vec<f64>, u64), RepoError> {
    let store_err =
        |e: mystira_dual_write::replicate::ReplicateError| RepoError::Store(e.to_string());
    let mut rates = Vec::new();
    let mut written = 0;
    for _ in 0..runs {
        sqlx::raw_sql(
            "truncate accounts, user_profiles, pending_signups, migration.document_versions,
                      migration.document_notes, migration.outbox cascade;
             delete from migration.work_ranges where job like 'replicate%'",
        )
        .execute(pool)
        .await
        .map_err(|e| mystira_postgres::map_sqlx_error("bench", e))?;
        let config = mystira_dual_write::replicate::ReplicateConfig {
            once: true,
            ..mystira_dual_write::replicate::ReplicateConfig::default()
        };
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let report =
            mystira_dual_write::replicate::run_replication(pool, store, &config, stop_rx, &|_| {})
                .await
                .map_err(store_err)?;
        let elapsed = started.elapsed().as_secs_f64();
        written = report.containers.values().map(|c| c.counts.written).sum();
        rates.push(written as f64 / elapsed);
    }
    Ok((rates, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms =
            |v: &[u64]| -> Vec<Duration> { v.iter().map(|&m| Duration::from_millis(m)).collect() };
        let l = latency(ms(&[5, 1, 4, 2, 3, 100, 6, 7, 8, 9]));
        assert_eq!(l.p50_ms, 5.0);
        assert_eq!(l.p99_ms, 100.0);
        assert_eq!(latency(Vec::new()), Latency::default());
    }

    #[test]
    fn spread_reports_the_median_run_and_the_extremes() {
        let run = |p50, p99| Latency {
            p50_ms: p50,
            p99_ms: p99,
        };
        let s = spread(vec![run(2.0, 9.0), run(1.0, 30.0), run(3.0, 10.0)]);
        assert_eq!(s.median, run(2.0, 10.0));
        assert_eq!(s.min, run(1.0, 9.0));
        assert_eq!(s.max, run(3.0, 30.0));
    }
}
