//! The run: open-loop pacing at the configured rate, the users' calls one at a time each, the
//! settling of the calls in flight, the report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use crate::ledger::LedgerWriter;
use mystira_dual_write::router::DualWriteRouter;

use super::call::{Ctx, Tally};
use super::config::{LoadConfig, LoadError};
use super::report::{LoadReport, OpStats};
use super::rng::Rng;
use super::steps::step;
use super::users::User;

pub(super) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// Drives `router` as `config` says until `duration` passes or `stop` resolves, then waits
/// (at most `settle_timeout`) for the calls in flight, fsyncs the ledger and reports. The first
/// ledger write that fails stops the run the same way, and the result is then
/// [`LoadError::LedgerWrite`] (see the module docs). Host [`mystira_dual_write::router::run_background`]
/// beside it: the journal and outbox it fills are drained there.
pub async fn run_load(
    router: &DualWriteRouter,
    config: &LoadConfig,
    stop: impl Future<Output = ()>,
) -> Result<LoadReport, LoadError> {
    if !(config.rate.is_finite() && config.rate > 0.0) {
        return Err(LoadError::BadRate);
    }
    let ledger = LedgerWriter::open(&config.ledger, config.seed)?;
    let run = ledger.run();
    let ctx = Arc::new(Ctx {
        router: router.clone(),
        ledger: ledger.clone(),
        tally: Mutex::new(Tally::default()),
        ledger_failure: Mutex::new(None),
        stop: tokio::sync::Notify::new(),
    });
    let concurrency = config.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<User>();
    let mut idle: Vec<User> = Vec::new();
    let mut rng = Rng::new(config.seed, run << 40 | 0xff_ffff_ffff);
    let mut users = 0u64;
    let mut over_concurrency = 0u64;

    let syncer = {
        let ctx = ctx.clone();
        let every = config.sync_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = ctx.ledger.sync() {
                    ctx.fail(e);
                    return;
                }
            }
        })
    };

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + config.duration;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate));
    // open loop: ticks missed while the runtime was busy are made up at once
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            // a failed ledger write stops the run before any other branch starts a call
            biased;
            _ = ctx.stop.notified() => break,
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(deadline) => break,
            Some(user) = done_rx.recv() => idle.push(user),
            _ = ticks.tick() => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    over_concurrency += 1;
                    continue;
                };
                // a steady population: new users arrive now and then, and whenever every
                // known user is busy
                let mut user = if idle.len() < concurrency || rng.chance(0.04) {
                    users += 1;
                    User::new(config.seed, run, users)
                } else {
                    let i = rng.below(idle.len() as u64) as usize;
                    idle.swap_remove(i)
                };
                let ctx = ctx.clone();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    step(&ctx, &mut user).await;
                    drop(permit);
                    let _ = done.send(user);
                });
            }
        }
    }
    let elapsed = started.elapsed();
    // the calls in flight finish (bounded): their outcome belongs in the ledger
    let settled = tokio::time::timeout(
        config.settle_timeout,
        permits.acquire_many(concurrency as u32),
    )
    .await;
    let abandoned = match settled {
        Ok(_) => 0,
        Err(_) => (concurrency - permits.available_permits()) as u64,
    };
    syncer.abort();
    let failure = ctx.failure().take();
    let failure = match failure {
        Some(e) => Some(e),
        None => ledger.sync().err(),
    };

    let tally = std::mem::take(&mut *ctx.tally());
    let per_op = tally
        .latencies
        .into_iter()
        .map(|((op, phase), (mut ok, failed))| {
            ok.sort_unstable();
            OpStats {
                op,
                phase,
                calls: ok.len() as u64 + failed,
                ok: ok.len() as u64,
                failed,
                p50_ms: percentile(&ok, 0.50),
                p99_ms: percentile(&ok, 0.99),
            }
        })
        .collect();
    let report = LoadReport {
        run,
        seed: config.seed,
        elapsed_seconds: elapsed.as_secs_f64(),
        target_rate: config.rate,
        achieved_rate: tally.calls as f64 / elapsed.as_secs_f64().max(1e-9),
        calls: tally.calls,
        acknowledged: tally.acked,
        failed: tally.failed,
        unrecorded: tally.unrecorded,
        errors: tally.errors,
        over_concurrency,
        abandoned,
        users,
        ledger_lines: ledger.lines(),
        per_op,
        router: router.stats(),
    };
    match failure {
        Some(source) => Err(LoadError::LedgerWrite {
            source,
            report: Box::new(report),
        }),
        None => Ok(report),
    }
}
