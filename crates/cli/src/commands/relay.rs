//! `mystira-users relay`: delivers the outbox to Cosmos (the logic is in
//! `mystira_dual_write::relay`).

use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use mystira_cosmos_store::CosmosRepositories;
use mystira_cosmos_store::CosmosStore;
use mystira_dual_write::heartbeat::{Health, Heartbeat, OutageBackoff, this_process};
use mystira_dual_write::relay::{RelayConfig, RelayReport, drain, run_relay};
use mystira_postgres::heartbeats::WorkerKind;
use mystira_postgres::outbox;
use serde_json::json;

use super::source::CosmosArgs;
use super::{Outcome, database, source, stop};
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users relay`
#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub cosmos: CosmosArgs,

    /// Deliver until the outbox is empty, then exit (0 when empty, 3 when rows are left at
    /// --timeout); otherwise run until SIGINT/SIGTERM
    #[arg(long)]
    pub drain: bool,

    /// With --drain: give up after this many seconds
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,

    /// Deliveries in flight at once
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub concurrency: usize,

    /// Aggregates taken per pass
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub batch: i64,

    /// While PostgreSQL is out, the longest wait between two attempts (the wait starts at a
    /// second and doubles up to this; the relay never gives up)
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub max_retry_wait_seconds: u64,
}

pub async fn run(args: &RelayArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let pool = database::prepared_pool(settings, (args.concurrency as u32 + 2).max(4)).await?;
    let store = source::connect_cosmos(&args.cosmos, settings).await?;
    let config = RelayConfig {
        batch_aggregates: args.batch.max(1),
        concurrency: args.concurrency.max(1),
        outage_backoff_cap: Duration::from_secs(args.max_retry_wait_seconds.max(1)),
        ..RelayConfig::default()
    };
    let started = Instant::now();
    // a continuous relay keeps a heartbeat (a drain is a one-off, like `replicate --once`),
    // from before it can reach Cosmos: waiting for it is retrying
    let heartbeat = if args.drain {
        None
    } else {
        Some(Heartbeat::start(&pool, this_process(WorkerKind::Relay, None)).await)
    };
    let stop = stop::stop_signal();
    tokio::pin!(stop);
    let give_up_at = args
        .drain
        .then(|| started + Duration::from_secs(args.timeout));
    let opened = open_containers(
        &store,
        config.outage_backoff_cap,
        give_up_at,
        heartbeat.as_ref().map(Heartbeat::health),
        &mut stop,
    )
    .await;
    let repos = match opened {
        Ok(Some(repos)) => repos,
        not_opened => {
            if let Some(heartbeat) = heartbeat {
                heartbeat.stop().await;
            }
            // an error that waiting does not fix, or --drain's timeout
            not_opened?;
            return Ok(Outcome {
                exit: Exit::Ok,
                human: "relay: stopped before Cosmos could be reached; nothing delivered\n"
                    .to_owned(),
                json: json!({ "report": RelayReport::default(), "outbox": null, "stopped": true }),
            });
        }
    };
    let (report, left) = if args.drain {
        drain(
            &pool,
            &repos.writer,
            &config,
            Duration::from_secs(args.timeout),
        )
        .await
        .map(|(report, left)| (report, Some(left)))
        .context("a relay pass failed")?
    } else {
        let heartbeat = heartbeat.expect("a continuous relay beats");
        let report = run_relay(&pool, &repos.writer, &config, &heartbeat.health(), stop).await;
        heartbeat.stop().await;
        let report = report.context("the relay stopped")?;
        // stopped during an outage: the depth is not known, which is no reason to fail
        let left = tokio::time::timeout(Duration::from_secs(5), outbox::depth(&pool))
            .await
            .ok()
            .and_then(Result::ok);
        if left.is_none() {
            tracing::warn!("cannot read the outbox's depth at the stop");
        }
        (report, left)
    };
    let exit = if args.drain && left.as_ref().is_none_or(|l| l.rows > 0) {
        Exit::Attention
    } else {
        Exit::Ok
    };
    let left_text = left.as_ref().map_or_else(
        || "unknown (PostgreSQL did not answer)".to_owned(),
        |l| format!("{} rows for {} aggregates left", l.rows, l.aggregates),
    );
    Ok(Outcome {
        exit,
        human: format!(
            "relay: {} delivered ({} put, {} removed), {} deferred, in {:.1} s; outbox: {}\n",
            report.delivered(),
            report.put,
            report.removed,
            report.deferred,
            started.elapsed().as_secs_f64(),
            left_text,
        ),
        json: json!({ "report": report, "outbox": left, "elapsed_seconds": started.elapsed().as_secs_f64() }),
    })
}

/// Opens the Cosmos containers, waiting out an outage (throttled, unavailable, unreachable:
/// 1 s doubling to `cap`): a continuous relay started while Cosmos is out must not exit
/// (issue 34, item 5), it says it is retrying and delivers once Cosmos answers. `--drain`
/// waits at most until `give_up_at`. `None`: stopped (SIGINT/SIGTERM) while waiting.
async fn open_containers(
    store: &CosmosStore,
    cap: Duration,
    give_up_at: Option<Instant>,
    health: Option<Health>,
    stop: &mut Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<Option<CosmosRepositories>> {
    let mut backoff = OutageBackoff::new(OutageBackoff::INITIAL, cap);
    loop {
        let error = match CosmosRepositories::open(store).await {
            Ok(repos) => return Ok(Some(repos)),
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        if !error.is_retryable() || give_up_at.is_some_and(|at| Instant::now() + delay > at) {
            return Err(error).context("cannot open the Cosmos containers");
        }
        if let Some(health) = &health {
            health.retrying("cosmos_unavailable");
        }
        tracing::warn!(
            kind = ?error.kind(),
            attempt = backoff.attempts(),
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "relay: cannot open the Cosmos containers; retrying"
        );
        tokio::select! {
            () = stop.as_mut() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
    }
}
